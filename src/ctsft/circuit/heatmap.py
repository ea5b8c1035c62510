"""Layer x head heatmap of head scores (diverging colours centred at 0, circuit heads outlined)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ctsft.io import atomic_path  # noqa: E402


def plot_heatmap(
    scores: np.ndarray,
    path: str | Path,
    title: str = "",
    label: str = "score",
    highlight: Sequence[Sequence[int]] = (),
) -> None:
    """Write a PNG of `scores` `[layer, head]`; `highlight` heads (the circuit) get a black box."""
    values = np.asarray(scores, dtype=float)
    n_layers, n_heads = values.shape
    vmax = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    vmax = vmax or 1.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n_heads, 1.0 + 0.38 * n_layers))
    image = ax.imshow(
        values, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -vmax, vmax), aspect="auto", origin="lower"
    )
    for layer, head in highlight:
        ax.add_patch(
            Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5)
        )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
