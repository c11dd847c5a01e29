"""Pictures: training curves, first-layer filters, feature maps, confusion matrices.

matplotlib is an optional extra (`pip install netdsl[plots]`), imported only when a picture is
drawn, with the Agg backend (no display needed). Every function writes the paths it is given
(the format follows the suffix: .png or .svg) and returns them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import NetdslError
from ..core.files import staged


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a NetdslError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NetdslError("pictures need matplotlib, which is not installed",
                          hint="pip install 'netdsl[plots]' (or pip install matplotlib)") from None
    return plt


def write_figure(fig, path, what: str = "picture", **savefig) -> str:
    """Write ``fig`` to ``path`` atomically (netdsl/core/files.py), in the format its suffix
    names; a name without one gets .png, as matplotlib gives it. Returns the path written; an
    unwritable path or an unknown format is a NetdslError."""
    path = str(path)
    if not Path(path).suffix:
        path = f"{path}.png"
    fmt = Path(path).suffix[1:].lower()     # the temp file's own name ends in .tmp.<ext>
    try:
        with staged(path, what) as tmp:
            fig.savefig(tmp, format=fmt, **savefig)
    except ValueError as exc:               # matplotlib: an unsupported format
        raise NetdslError(f"cannot write {what} '{path}': {exc}",
                          hint="use a .png, .svg or .pdf file name") from None
    return path


def save_figure(fig, paths) -> list[str]:
    """Write ``fig`` to each path (directories made as needed, see :func:`write_figure`), then
    close it; the paths written."""
    out = []
    try:
        for p in paths:
            try:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise NetdslError(f"cannot write picture '{p}': {exc.strerror or exc}",
                                  hint="choose a path in a writable directory") from None
            out.append(write_figure(fig, p, dpi=100, bbox_inches="tight"))
    finally:
        pyplot().close(fig)
    return out


def plot_curves(history: list[dict], out_dir, test_name: str = "held-out") -> list[str]:
    """Loss, train and held-out accuracy, and learning rate per epoch → curves.png and .svg."""
    plt = pyplot()
    ep = [r["epoch"] for r in history]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.2))
    a1.plot(ep, [r["loss"] for r in history], "o-")
    a1.set(title="training loss", xlabel="epoch")
    # a regression head's rows hold the mean absolute error (train/metrics.py), not a fraction
    mae = history and history[-1].get("metric") == "mae"
    scale = 1 if mae else 100
    a2.plot(ep, [scale * r["train_acc"] for r in history], "o-", label="train")
    a2.plot(ep, [scale * r["test_acc"] for r in history], "s-", label=test_name)
    a2.set(title="mean absolute error" if mae else "exact-match accuracy (%)"
           if history and history[-1].get("metric") == "exact_match" else "accuracy (%)",
           xlabel="epoch")
    a2.legend()
    a3.plot(ep, [r["lr"] for r in history], "o-")
    a3.set(title="learning rate (end of epoch)", xlabel="epoch")
    for a in (a1, a2, a3):
        a.grid(alpha=0.3)
    return save_figure(fig, [Path(out_dir) / "curves.png", Path(out_dir) / "curves.svg"])


def _grid(images: np.ndarray, path, title: str, cmap="gray") -> list[str]:
    """Images (N, H, W) or (N, H, W, 3) in a near-square grid, each scaled to its own range."""
    plt = pyplot()
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9 + 0.5, rows * 0.9 + 0.6),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            im = images[i].astype(np.float64)
            lo, hi = im.min(), im.max()
            ax.imshow((im - lo) / (hi - lo) if hi > lo else im * 0, cmap=cmap,
                      interpolation="nearest")
    fig.suptitle(title)
    return save_figure(fig, [path])


def plot_filters(weight: np.ndarray, path, title: str = "first-layer filters") -> list[str]:
    """A conv weight (KH, KW, C, F) as F tiles: RGB when C is 3, else channel 0 in grey."""
    w = np.asarray(weight)
    if w.ndim != 4:
        raise NetdslError(f"filters need a convolution weight (KH×KW×C×F), got shape {w.shape}")
    tiles = np.moveaxis(w, 3, 0)                   # (F, KH, KW, C)
    tiles = tiles if tiles.shape[-1] == 3 else tiles[..., 0]
    return _grid(tiles, path, title)


def plot_feature_maps(maps: np.ndarray, path, title: str) -> list[str]:
    """One example's activations (H, W, C) as C grey tiles (at most 64 shown)."""
    m = np.asarray(maps)
    if m.ndim != 3:
        raise NetdslError(f"feature maps need a spatial layer output (H×W×C), got shape {m.shape}",
                          hint="pick a conv, pool or activation layer before FLATTEN/FC")
    return _grid(np.moveaxis(m, 2, 0)[:64], path, title, cmap="viridis")


def plot_confusion(matrix, labels, path) -> list[str]:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    plt = pyplot()
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise NetdslError(f"a confusion matrix is square with one label per class, got shape "
                          f"{m.shape} and {len(labels)} labels")
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1 + 0.45 * k, 1 + 0.45 * k))
    ax.imshow(m, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title="confusion matrix")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    return save_figure(fig, [path])
