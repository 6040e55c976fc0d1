"""Pictures of an evaluation: Recall@K curves per model, written as PNG (matplotlib, no screen)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no backend, no screen, no global state


def _curve(values: dict, ks: list[int]) -> list[float]:
    return [values[f"recall@{k}"] for k in ks]


def recall_curves(result: dict, path: Path, ks: tuple[int, ...]) -> Path:
    """Recall@K against K for every model (solid) and ablation variant (dashed), and beside it
    the cold-start items' curves when the result has them; written to `path`."""
    panels = [("all test users", result["models"], result.get("ablation", {}))]
    if "cold_start" in result:
        cold = {k: v for k, v in result["cold_start"].items() if isinstance(v, dict)}
        items, draws = result["cold_start"]["items"], len(result["cold_start"]["draws"])
        panels.append((f"cold start ({items} held-out items, mean of {draws} draws)", cold, {}))
    fig = Figure(figsize=(6.5 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, models, variants) in zip(axes[0], panels, strict=True):
        for name, values in models.items():
            ax.plot(ks, _curve(values, list(ks)), marker="o", label=name)
        for name, values in variants.items():
            ax.plot(ks, _curve(values, list(ks)), ls="--", marker=".", label=f"tower: {name}")
        ax.set(xscale="log", xticks=ks, xticklabels=[str(k) for k in ks], xlabel="K",
               ylabel="Recall@K", title=title)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['dataset']}, {result['split']['kind']} split")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
