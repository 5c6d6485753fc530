"""The study's figures (matplotlib): impact vs k with intervals, the learning-rate axis, ROAR/KAR, example masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

HIGHLIGHT = {"normgrad", "selective", "meta", "meta:selective", "adversarial", "random"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(ax: Any, rows: list[dict], methods: Sequence[str], x_key: str, scale: float = 100.0) -> None:
    """One line per method: value vs ``x_key`` with its interval as error bars (slightly offset to stay readable)."""
    for i, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r[x_key])
        if not mine:
            continue
        xs = np.array([r[x_key] * scale for r in mine])
        offset = 1 + 0.012 * (i - len(methods) / 2)
        ys = np.array([r["value"] for r in mine])
        errors = np.array([[r["value"] - r["low"] for r in mine], [r["high"] - r["value"] for r in mine]])
        ax.errorbar(
            xs * offset,
            ys,
            yerr=np.clip(errors, 0, None),
            marker="o",
            markersize=3,
            capsize=2,
            label=method,
            linewidth=2.0 if method in HIGHLIGHT else 1.0,
            linestyle="-" if method in HIGHLIGHT else "--",
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter("")  # no 2×10¹-style labels between the chosen ticks
    ax.grid(alpha=0.3)


def impact_figure(path: Path, summary: dict[str, Any], lr: float, title: str) -> Path:
    """Share of the full step's loss reduction vs k per method, panels = measure × fill, at ``lr``."""
    plt = _pyplot()
    measures = sorted({r["measure"] for r in summary["shares"]}, key=["self", "class"].index)
    fills = summary["fills"]
    fig, axes = plt.subplots(len(measures), len(fills), figsize=(5.2 * len(fills), 3.8 * len(measures)), squeeze=False)
    for row, measure in enumerate(measures):
        for col, fill in enumerate(fills):
            ax = axes[row][col]
            rows = [
                r
                for r in summary["shares"]
                if (r["measure"], r["kind"], r["fill"]) == (measure, "measured", fill) and abs(r["lr"] - lr) < 1e-12
            ]
            _series(ax, rows, summary["methods"], "fraction")
            ax.set_xticks([f * 100 for f in summary["fractions"]])
            ax.set_xticklabels([f"{f:.0%}" for f in summary["fractions"]])
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set_xlabel("pixels kept (k)")
            ax.set_ylabel("share of the full step's loss reduction")
            what = "the unmasked image" if measure == "self" else "held-out images of the class"
            ax.set_title(f"loss of {what}; rest = {fill}", fontsize=9)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title} (lr {lr:g}, 95 % bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def lr_figure(path: Path, summary: dict[str, Any], fraction: float, fill: str) -> Path:
    """Share at one ``k`` vs the learning rate, per method (measured, the unmasked image)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    rows = [
        r
        for r in summary["shares"]
        if (r["measure"], r["kind"], r["fill"]) == ("self", "measured", fill) and abs(r["fraction"] - fraction) < 1e-9
    ]
    _series(ax, rows, summary["methods"], "lr", scale=1.0)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("learning rate of the inner step (meta maps and the measured step)")
    ax.set_ylabel("share of the full step's loss reduction")
    ax.set_title(f"{summary['regime']}: k = {fraction:.0%}, rest = {fill} (95 % intervals)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roar_figure(path: Path, roar: dict[str, Any]) -> Path:
    """Test accuracy after retraining vs k, ROAR and KAR side by side, with seed intervals and the unmodified reference."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    reference = roar["reference"]
    for ax, mode, what in zip(axes[0], ("roar", "kar"), ("removed (ROAR)", "kept (KAR)")):
        rows = [r for r in roar["accuracy"] if r["mode"] == mode]
        _series(ax, rows, roar["methods"], "fraction")
        ax.axhspan(reference["low"], reference["high"], color="grey", alpha=0.2, label="unmodified")
        ax.set_xticks([f * 100 for f in roar["fractions"]])
        ax.set_xticklabels([f"{f:.0%}" for f in roar["fractions"]])
        ax.set_xlabel(f"top pixels {what}")
        ax.set_ylabel("test accuracy after retraining")
        ax.set_ylim(0, 1)
        ax.set_title(f"{mode.upper()}: {len(roar['seeds'])} seeds, {roar['train_images']} training images", fontsize=9)
    axes[0][1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def masks_figure(path: Path, images: Tensor, masked: dict[str, list[Tensor]], fractions: Sequence[float], titles: Sequence[str]) -> Path:
    """Rows: methods; columns: each example image, then what is kept of it at each k (dataset-mean fill)."""
    plt = _pyplot()
    methods = list(masked)
    columns = len(images) * (1 + len(fractions))
    fig, axes = plt.subplots(len(methods), columns, figsize=(1.1 * columns, 1.15 * len(methods)), squeeze=False)
    for row, method in enumerate(methods):
        for i, image in enumerate(images):
            panels = [image, *[masked[method][ki][i] for ki in range(len(fractions))]]
            low, high = float(image.min()), float(image.max())
            for j, panel in enumerate(panels):
                ax = axes[row][i * (1 + len(fractions)) + j]
                ax.imshow(_displayable(panel, low, high), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(titles[i] if j == 0 else f"k={fractions[j - 1]:.0%}", fontsize=7)
            axes[row][0].set_ylabel(method, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _displayable(image: Tensor, low: float, high: float) -> np.ndarray:
    """A (C, H, W) model-space image scaled by its original's range to [0, 1] for display (grey or RGB)."""
    image = ((image.detach().float().cpu() - low) / max(high - low, 1e-12)).clamp(0, 1)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
