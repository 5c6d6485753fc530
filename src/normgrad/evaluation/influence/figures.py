"""The study's figures (matplotlib): patched test images with their proponents' maps; the most self-influential images."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _signed(ax, image: Tensor, plane: Tensor | None) -> None:
    ax.imshow(image[0].numpy(), cmap="gray")
    if plane is not None:
        scale = max(float(plane.abs().max()), 1e-30)
        ax.imshow(plane.numpy(), cmap="bwr", vmin=-scale, vmax=scale, alpha=0.6)
    ax.set_xticks([])
    ax.set_yticks([])


def proponents_figure(path: Path, test_x: Tensor, train_x: Tensor, patched: Tensor, result, rows: int = 4) -> None:
    """Rows: the test images with the most patched proponents, each then its top proponents with their signed maps
    (green frame: a patched training image)."""
    plt = _pyplot()
    rows = min(rows, len(test_x))
    k = result.proponents.shape[1]
    chosen = patched[result.proponents].sum(1).argsort(descending=True, stable=True)[:rows].tolist()
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.6 * (k + 1), 1.7 * rows), squeeze=False)
    for row, t in enumerate(chosen):
        axes_row = axes[row]
        _signed(axes_row[0], test_x[t], None)
        axes_row[0].set_title("test", fontsize=8)
        for column, index in enumerate(result.proponents[t].tolist()):
            ax = axes_row[column + 1]
            _signed(ax, train_x[index], result.proponent_maps[t, column, 0])
            ax.set_title(f"{float(result.scores[t, index]):+.2g}", fontsize=8)
            if bool(patched[index]):
                for spine in ax.spines.values():
                    spine.set_edgecolor("limegreen")
                    spine.set_linewidth(3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def flagged_figure(path: Path, train_x: Tensor, labels: Tensor, true_labels: Tensor, result, count: int = 8) -> None:
    """The highest self-influence training images with their self-influence maps; title: given / true label."""
    plt = _pyplot()
    count = min(count, len(result.top))
    fig, axes = plt.subplots(1, count, figsize=(1.6 * count, 1.9), squeeze=False)
    for column, index in enumerate(result.top[:count].tolist()):
        ax = axes[0, column]
        _signed(ax, train_x[index], result.maps[column, 0])
        wrong = int(labels[index]) != int(true_labels[index])
        ax.set_title(
            f"{int(labels[index])}/{int(true_labels[index])}" + (" ✗" if wrong else ""), fontsize=8, color="red" if wrong else "black"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["flagged_figure", "proponents_figure"]
