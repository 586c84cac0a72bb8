"""``curves.png``: a run's losses, validation metrics and learning rate per epoch."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

from ..fileio import atomic_write

__all__ = ["plot_curves"]

logging.getLogger("matplotlib").setLevel(logging.WARNING)


def _series(records: Sequence[Dict[str, Any]], key: str):
    points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def plot_curves(records: List[Dict[str, Any]], path: str) -> None:
    """Draw every ``*loss`` key, every ``val_top*`` key and ``lr`` of ``metrics.jsonl`` records."""
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r})
    panels = [("loss", [k for k in keys if k.endswith("loss")]),
              ("val accuracy (%)", [k for k in keys if k.startswith("val_top")]),
              ("learning rate (end of epoch)", ["lr"] if "lr" in keys else [])]
    panels = [(title, names) for title, names in panels if names]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels):
        for name in names:
            ax.plot(*_series(records, name), "o-", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
