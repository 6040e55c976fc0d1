"""What serves: datasets into the offline store, the Feast stores, and the `ttr` CLI."""
