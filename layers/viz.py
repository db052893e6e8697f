"""Plotting helpers the chapters call; each returns a :class:`matplotlib.figure.Figure`.

Every figure has a title, labelled axes and a legend where several lines are
drawn. The helpers compute nothing of their own that a layer could get wrong:
derivatives are taken through the layer's own backward with autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "function_and_derivative",
    "plot_function_and_derivative",
    "plot_histograms",
    "plot_training_curves",
    "plot_bars",
    "plot_image_grid",
]


def function_and_derivative(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``fn(x)`` and ``d fn / dx`` elementwise, the derivative from ``fn``'s own backward.

    ``fn`` must act elementwise (an activation). ``x`` is 1-D; both results have its shape.
    """
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (dy,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), dy.detach()


def plot_function_and_derivative(
    fns: Mapping[str, Callable[[Tensor], Tensor]],
    x: Tensor | None = None,
    title: str = "Activation functions and their derivatives",
) -> Figure:
    """Two panels: each function, and its derivative through its hand-written backward.

    Args:
        fns: ``{label: elementwise function}``, e.g. ``{"ReLU": layers.ReLU()}``.
        x: the points to evaluate, 1-D; ``linspace(-4, 4, 401)`` if ``None``.
        title: figure title.
    """
    x = torch.linspace(-4, 4, 401) if x is None else x
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, fn in fns.items():
        y, dy = function_and_derivative(fn, x)
        ax_f.plot(x.numpy(), y.numpy(), label=label)
        ax_d.plot(x.numpy(), dy.numpy(), label=label)
    ax_f.set(title="f(x)", xlabel="input x", ylabel="output f(x)")
    ax_d.set(title="f'(x) from backward()", xlabel="input x", ylabel="derivative df/dx")
    for ax in (ax_f, ax_d):
        ax.grid(alpha=0.3)
        ax.axhline(0, color="black", lw=0.5)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_histograms(
    values: Mapping[str, Tensor],
    title: str = "Distribution per layer",
    xlabel: str = "value",
    bins: int = 50,
    range: tuple[float, float] | None = None,
    ncols: int | None = None,
) -> Figure:
    """One histogram per named tensor (activations or gradients per layer), side by side.

    Args:
        values: ``{panel title: tensor}``; each tensor is flattened.
        title: figure title.
        xlabel: x-axis label of every panel.
        bins: histogram bins.
        range: common x range; each panel's own range if ``None``.
        ncols: panels per row; all in one row if ``None``.
    """
    n = len(values)
    ncols = ncols or n
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.4 * nrows), squeeze=False)
    for ax, (name, v) in zip(axes.flat, values.items()):
        v = v.detach().float().flatten().cpu()
        ax.hist(v.numpy(), bins=bins, range=range, color="tab:blue")
        ax.set_title(f"{name}\nstd {v.std().item():.3g}" if v.numel() > 1 else name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0][0].set_ylabel("count")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(histories: Mapping[str, Mapping[str, Sequence[float]]],
                         title: str = "Training") -> Figure:
    """Loss and test accuracy per epoch for one or more runs (histories from :func:`layers.training.fit`)."""
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, h in histories.items():
        ax_l.plot(h["epoch"], h["loss"], marker="o", ms=3, label=label)
        ax_a.plot(h["epoch"], h["test_acc"], marker="o", ms=3, label=label)
    ax_l.set(title="training loss", xlabel="epoch", ylabel="mean cross-entropy")
    ax_a.set(title="test accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_bars(values: Mapping[str, float] | Mapping[str, Mapping[str, float]], title: str,
              ylabel: str, xlabel: str = "", log: bool = False) -> Figure:
    """Bar chart of named values; a mapping of mappings draws grouped bars with a legend."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    first = next(iter(values.values()), None)
    if isinstance(first, Mapping):
        groups = list(values)
        keys = list(first)
        width = 0.8 / len(groups)
        for i, g in enumerate(groups):
            pos = [k + i * width - 0.4 + width / 2 for k in range(len(keys))]
            ax.bar(pos, [values[g][k] for k in keys], width=width, label=g)
        ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    else:
        keys = list(values)
        ax.bar(range(len(keys)), [values[k] for k in keys], color="tab:blue")
        ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set(title=title, ylabel=ylabel, xlabel=xlabel)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_image_grid(images: Tensor, titles: Sequence[str] | None = None, title: str = "",
                    ncols: int = 8, cmap: str = "gray") -> Figure:
    """Show ``(N, H, W)`` (or ``(N, 1, H, W)``) tensors as a grid of images (digits, feature maps, filters)."""
    images = images.detach().float().cpu()
    if images.dim() == 4:
        images = images[:, 0]
    n = images.shape[0]
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.4 * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].numpy(), cmap=cmap)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
