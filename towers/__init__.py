"""The models and how they learn; Feast is reached only through `towers.features`."""
