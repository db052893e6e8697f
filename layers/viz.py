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
    "plot_parameter_traces",
    "plot_im2col",
    "plot_gradient_norms",
    "record_outputs",
    "plot_attention_maps",
    "plot_memory_vs_length",
    "plot_loss_vs_probability",
    "plot_quantizer",
    "plot_series",
]


def _finish_panels(fig: Figure, axes, title: str) -> Figure:
    """The common ending of the side-by-side line plots: grid and legend per panel, a title, tight layout."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


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
        ax.axhline(0, color="black", lw=0.5)
    return _finish_panels(fig, (ax_f, ax_d), title)


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
    """Loss and held-out accuracy per epoch for one or more runs (histories from :func:`layers.training.fit`).

    The accuracy panel shows ``val_acc`` when the histories have it (a run with a
    validation split), else ``test_acc``.
    """
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.6))
    held = "val" if all("val_acc" in h for h in histories.values()) else "test"
    for label, h in histories.items():
        ax_l.plot(h["epoch"], h["loss"], marker="o", ms=3, label=label)
        ax_a.plot(h["epoch"], h[f"{held}_acc"], marker="o", ms=3, label=label)
    ax_l.set(title="training loss", xlabel="epoch", ylabel="mean cross-entropy")
    ax_a.set(title=f"{'validation' if held == 'val' else 'test'} accuracy", xlabel="epoch", ylabel="accuracy")
    return _finish_panels(fig, (ax_l, ax_a), title)


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


# ------------------------------------------------------- parameter traces (chapter "Activations")


def plot_parameter_traces(traces: Mapping[str, Tensor], title: str = "Parameters during training",
                          xlabel: str = "optimizer step", ylabel: str = "value") -> Figure:
    """How a vector parameter moves during training: one thin line per element, the mean in bold.

    Used for the learned slopes of :class:`layers.activations.PReLU`, recorded
    after every step with ``fit(..., on_step=...)``.

    Args:
        traces: ``{run label: tensor of shape (steps, K)}``, row ``s`` the parameter
            after step ``s + 1``; a 1-D tensor is one element per step.
        title: figure title.
        xlabel: x-axis label.
        ylabel: y-axis label (the parameter and its unit).
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, trace) in enumerate(traces.items()):
        trace = trace.detach().float().cpu()
        trace = trace.reshape(trace.shape[0], -1)                 # (steps, K)
        steps = torch.arange(1, trace.shape[0] + 1).numpy()
        color = colors[i % len(colors)]
        if trace.shape[1] > 1:
            ax.plot(steps, trace.numpy(), color=color, lw=0.6, alpha=0.35)
            ax.plot([], [], color=color, lw=0.6, alpha=0.35, label=f"{label}: each of {trace.shape[1]}")
        ax.plot(steps, trace.mean(dim=1).numpy(), color=color, lw=2.2,
                label=f"{label}: mean" if trace.shape[1] > 1 else label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------ convolutions (chapter "Convolutions and normalization")


def plot_im2col(image: Tensor, columns: Tensor, kernel_size: int, row: int, col: int,
                title: str = "im2col: one patch becomes one column") -> Figure:
    """Show one ``k x k`` patch of a one-channel image and the column of ``columns`` it becomes.

    Args:
        image: ``(H, W)`` image (no padding).
        columns: ``(k*k, H_out*W_out)`` matrix from :func:`layers.conv.im2col` of that image
            (stride 1, no padding).
        kernel_size: ``k``.
        row, col: top-left pixel of the highlighted patch (= its output position).
    """
    from matplotlib.patches import Rectangle

    image, columns = image.detach().float().cpu(), columns.detach().float().cpu()
    k = kernel_size
    w_out = image.shape[1] - k + 1
    index = row * w_out + col
    fig, (ax_i, ax_c) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
    ax_i.imshow(image.numpy(), cmap="gray")
    ax_i.add_patch(Rectangle((col - 0.5, row - 0.5), k, k, fill=False, edgecolor="tab:red", lw=2.5,
                             label=f"patch at ({row}, {col})"))
    ax_i.set(title=f"input {tuple(image.shape)}", xlabel="column (pixel)", ylabel="row (pixel)")
    ax_i.legend(fontsize=8, loc="lower right")
    ax_c.imshow(columns.numpy(), cmap="gray", aspect="auto")
    ax_c.add_patch(Rectangle((index - 0.5, -0.5), 1, k * k, fill=False, edgecolor="tab:red", lw=2.5,
                             label=f"column {index}"))
    ax_c.set(title=f"columns {tuple(columns.shape)}: one per output pixel",
             xlabel="output pixel index  i * W_out + j", ylabel="patch entry  u * k + v")
    ax_c.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_gradient_norms(norms: Mapping[str, Sequence[float]], title: str = "Gradient norm per depth",
                        xlabel: str = "block (1 = nearest the input)",
                        ylabel: str = "gradient norm (log scale)") -> Figure:
    """One line per model: a gradient norm for each depth, on a log scale."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, values in norms.items():
        ax.plot(range(1, len(values) + 1), list(values), marker="o", ms=3, label=label)
    ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def record_outputs(model: torch.nn.Module, x: Tensor, types: tuple[type, ...]) -> dict[str, Tensor]:
    """Run ``model(x)`` and return the output of every submodule of the given types, by name.

    Uses forward hooks, removed afterwards; the model is not modified.
    """
    outputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(name, out.detach()))
             for name, m in model.named_modules() if isinstance(m, types)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return outputs


# ----------------------------------------------------------------- attention and losses
def plot_attention_maps(weights: Tensor, titles: Sequence[str] | None = None,
                        title: str = "Attention maps", xlabels: Sequence[str] | None = None,
                        ylabels: Sequence[str] | None = None, ncols: int | None = None) -> Figure:
    """Heatmaps of attention probabilities, one panel per map (per head, per mask, ...).

    Args:
        weights: ``(n, L, S)`` (or ``(L, S)``) probabilities; row ``i`` is query ``i``.
        titles: one panel title per map.
        title: figure title.
        xlabels: tick labels of the ``S`` key positions (e.g. the input tokens).
        ylabels: tick labels of the ``L`` query positions.
        ncols: panels per row; all in one row if ``None``.
    """
    w = weights.detach().float().cpu()
    if w.dim() == 2:
        w = w.unsqueeze(0)
    n, L, S = w.shape
    ncols = ncols or n
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols + 0.8, 2.7 * nrows + 0.5), squeeze=False)
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        image = ax.imshow(w[i].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(titles[i] if titles is not None else f"map {i}", fontsize=9)
        ax.set_xlabel("key position", fontsize=8)
        ax.set_ylabel("query position", fontsize=8)
        ax.set_xticks(range(S), xlabels if xlabels is not None else range(S), fontsize=7)
        ax.set_yticks(range(L), ylabels if ylabels is not None else range(L), fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention probability")
    return fig


def plot_memory_vs_length(lengths: Sequence[int], panels: Mapping[str, Mapping[str, Sequence[float]]],
                          title: str = "Attention memory", xlabel: str = "sequence length L = S (tokens)",
                          ylabel: str = "memory (MiB)") -> Figure:
    """Memory per method over sequence lengths, on log-log axes, one panel per measurement.

    Args:
        lengths: the sequence lengths measured.
        panels: ``{panel title: {method: values (one per length)}}``.
        title: figure title.
        xlabel: x-axis label.
        ylabel: y-axis label (say the unit).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels.items()):
        for label, values in series.items():
            ax.plot(list(lengths), list(values), marker="o", ms=4, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_loss_vs_probability(losses: Mapping[str, Callable[[Tensor, Tensor], Tensor]],
                             p: Tensor | None = None,
                             title: str = "Loss and gradient vs the probability of the true class") -> Figure:
    """A binary loss and the size of its gradient as functions of :math:`p_t`.

    Each loss is evaluated at logits :math:`x = \\log(p_t / (1 - p_t))` with target 1,
    so :math:`p_t = \\sigma(x)`; the gradient :math:`|\\partial \\ell / \\partial x|`
    comes from the loss's own backward.

    Args:
        losses: ``{label: loss(logits, targets)}`` returning per-element losses.
        p: the probabilities of the true class to evaluate, 1-D in (0, 1).
        title: figure title.
    """
    p = torch.linspace(0.01, 0.99, 197, dtype=torch.float64) if p is None else p.double()
    logits = torch.log(p) - torch.log1p(-p)                             # sigmoid(logits) = p
    fig, (ax_l, ax_g) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, fn in losses.items():
        x = logits.clone().requires_grad_(True)
        loss = fn(x, torch.ones_like(x))
        (grad,) = torch.autograd.grad(loss.sum(), x)
        ax_l.plot(p.numpy(), loss.detach().numpy(), label=label)
        ax_g.plot(p.numpy(), grad.abs().numpy(), label=label)
    ax_l.set(title="loss", xlabel="probability of the true class $p_t$", ylabel="loss (nats)")
    ax_g.set(title="gradient size from backward()", xlabel="probability of the true class $p_t$",
             ylabel="|d loss / d logit|")
    return _finish_panels(fig, (ax_l, ax_g), title)


# ------------------------------------------------------------------ quantization chapter


def plot_quantizer(fn: Callable[[Tensor], Tensor], x: Tensor, samples: Tensor,
                   title: str = "Fake quantization") -> Figure:
    """Two panels: ``fn`` (a fake quantizer) over ``x`` with its backward (the STE gradient) on a
    second axis, and the histogram of the quantization error ``fn(samples) - samples``.

    Args:
        fn: elementwise fake-quantization function, e.g. ``lambda t: fake_quantize(t, s, z, 0, 7)``.
        x: 1-D points for the staircase.
        samples: data whose quantization error is histogrammed.
        title: figure title.
    """
    y, dy = function_and_derivative(fn, x)
    err = (fn(samples.detach()) - samples.detach()).detach().flatten()
    fig, (ax_f, ax_e) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_f.plot(x.numpy(), x.numpy(), color="grey", lw=0.8, ls="--", label="identity y = x")
    ax_f.plot(x.numpy(), y.numpy(), color="tab:blue", label="fake_quantize(x)")
    ax_g = ax_f.twinx()
    ax_g.plot(x.numpy(), dy.numpy(), color="tab:red", lw=1, label="STE gradient (backward)")
    ax_g.set_ylim(-0.1, 1.6)
    ax_g.set_ylabel("gradient dy/dx")
    lines = ax_f.get_lines() + ax_g.get_lines()
    ax_f.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="upper left")
    ax_f.set(title="staircase and its STE gradient", xlabel="input x", ylabel="output y")
    ax_f.grid(alpha=0.3)
    ax_e.hist(err.numpy(), bins=60, color="tab:blue")
    ax_e.set(title="quantization error of the samples", xlabel="error y - x", ylabel="count")
    ax_e.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_series(x: Sequence[float], series: Mapping[str, Sequence[float]], title: str, xlabel: str,
                ylabel: str, errors: Mapping[str, Sequence[float]] | None = None, logx: bool = False) -> Figure:
    """Lines ``{label: y values}`` over a common ``x``, with optional error bars ``{label: std}``."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, ys in series.items():
        yerr = None if errors is None else errors.get(label)
        ax.errorbar(list(x), list(ys), yerr=yerr, marker="o", ms=4, capsize=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
