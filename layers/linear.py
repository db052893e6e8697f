"""Linear layer with a hand-written backward pass.

Taught in the chapter "Writing a backward pass" (``book/backward_pass.ipynb``);
:class:`Linear` is also the building block of the "Modules and parameters" chapter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .composable import autocast_apply, autocast_dtype, compilable_apply
from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = ["LinearFunction", "Linear", "linear"]


class LinearFunction(torch.autograd.Function):
    r"""Affine map :math:`y = x W^\top + b` with a manual backward.

    Backward, for an upstream gradient :math:`g = \partial L / \partial y`:

    .. math::

        \frac{\partial L}{\partial x} = g W, \qquad
        \frac{\partial L}{\partial W} = g^\top x, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_{\text{rows}} g .

    Forward-mode, for tangents :math:`\dot x, \dot W, \dot b` (product rule):
    :math:`\dot y = \dot x W^\top + x \dot W^\top + \dot b`.

    Shapes: ``x`` is ``(*, in)``, ``weight`` is ``(out, in)``, ``bias`` is ``(out,)``
    or ``None``; the output is ``(*, out)``.

    With a bias the forward is one ``addmm`` (the bias added in the product's
    accumulator), as :func:`torch.nn.functional.linear`: in float16/bfloat16 a
    product rounded to the dtype and then added to the bias is rounded twice, and
    was about twice as far from the exact result as torch's.

    The backward is written with differentiable torch ops, so double backward
    (``gradgradcheck``, Hessian-vector products) works through it; the forward
    is pure and the context is set in ``setup_context``, so ``vmap`` comes from
    ``generate_vmap_rule``. Every op is a torch op, so the Function also runs on
    :class:`~torch.distributed.tensor.DTensor` inputs (tensor parallelism).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if bias is None:
            return x @ weight.t()                              # (*, in) @ (in, out) -> (*, out)
        out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight.t())   # (N, in) @ (in, out) + b -> (N, out)
        return out.reshape(*x.shape[:-1], weight.shape[0])     # (*, out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)                       # only what backward reads
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None                        # non-tensors go on ctx directly

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        dx = dw = db = None                                    # one gradient per forward input
        if ctx.needs_input_grad[0]:
            dx = grad_out @ weight                             # (*, out) @ (out, in) -> (*, in)
        if ctx.needs_input_grad[1]:
            g2d = grad_out.reshape(-1, grad_out.shape[-1])     # (N, out), N = prod(*)
            dw = g2d.t() @ x.reshape(-1, x.shape[-1])          # (out, N) @ (N, in) -> (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)   # (out,)
        return dx, dw, db

    @staticmethod
    def jvp(ctx, x_t: Tensor | None, w_t: Tensor | None, b_t: Tensor | None) -> Tensor:
        x, weight = ctx.saved_tensors
        y_t = None
        if x_t is not None:
            y_t = x_t @ weight.t()                             # (*, in) @ (in, out) -> (*, out)
        if w_t is not None:
            term = x @ w_t.t()                                 # (*, in) @ (in, out) -> (*, out)
            y_t = term if y_t is None else y_t + term
        if b_t is not None:
            y_t = b_t.expand(*x.shape[:-1], weight.shape[0]) if y_t is None else y_t + b_t   # (*, out)
        return y_t


_linear_apply = compilable_apply(LinearFunction)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Functional form of :class:`Linear`: ``input @ weight.T + bias`` via :class:`LinearFunction`.

    Same arguments as :func:`torch.nn.functional.linear`. Under ``torch.autocast``
    it runs in the lower precision (float16 / bfloat16), as torch's ``linear``.

    Args:
        input: ``(*, in_features)``.
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or ``None``.

    Returns:
        Tensor of shape ``(*, out_features)``.
    """
    _check_input("linear", input, weight, bias)
    return autocast_apply(_linear_apply, "lower", input, weight, bias)


def _check_input(where: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    check_tensor(x, where, min_ndim=1)
    check_tensor(weight, where, "weight", ndim=2)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{where}: expected input with {weight.shape[1]} features in its last dimension, "
            f"got {x.shape[-1]} (shape {tuple(x.shape)})"
        )
    if bias is not None:
        check_tensor(bias, where, "bias")
        if bias.shape not in ((weight.shape[0],), ()):
            raise ValueError(f"{where}: expected bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_same_device(where, x, weight)
    if autocast_dtype(x.device.type, "lower") is None:        # under autocast all are cast
        check_same_dtype(where, x, weight)


class Linear(nn.Linear):
    r"""Applies an affine map :math:`y = x W^\top + b`, with a hand-written backward.

    A drop-in replacement for :class:`torch.nn.Linear`: same constructor
    arguments, parameter names, shapes and default initialization, so
    ``load_state_dict`` works in both directions. ``Linear(in_features,
    out_features, bias=False)`` is the "LinearNoBias" pattern.

    Why a subclass of :class:`torch.nn.Linear`: torch's own tools recognise a
    linear layer by ``isinstance(module, nn.Linear)``. The one that matters most
    is tensor parallelism: ``parallelize_module`` with ``ColwiseParallel`` /
    ``RowwiseParallel`` refuses any other module. As a subclass this layer gets
    nn.Linear's constructor, ``reset_parameters`` and ``extra_repr`` unchanged,
    and only ``forward`` is ours: it calls :func:`linear`, the hand-written
    :class:`LinearFunction`, which also works on the ``DTensor`` shards those
    tools create.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: if ``False``, the layer learns no additive bias. Default: ``True``.
        device, dtype: where and in which dtype to create the parameters.

    Shape:
        - Input: :math:`(*, H_{in})` where :math:`*` is any number of leading
          dimensions (including none) and :math:`H_{in} = \text{in\_features}`.
        - Output: :math:`(*, H_{out})` with :math:`H_{out} = \text{out\_features}`.

    Attributes:
        weight: learnable ``(out_features, in_features)`` tensor, initialized from
            :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with :math:`k = 1/\text{in\_features}`
            (``kaiming_uniform_`` with ``a=sqrt(5)``, as PyTorch does).
        bias: learnable ``(out_features,)`` tensor, initialized from
            :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`, or ``None``.

    Examples:
        >>> layer = Linear(20, 30)
        >>> layer(torch.randn(128, 20)).shape
        torch.Size([128, 30])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        if in_features < 0 or out_features < 0:
            raise ValueError(
                f"Linear: expected non-negative sizes, got in_features={in_features}, "
                f"out_features={out_features}"
            )
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        _check_input("Linear", input, self.weight, self.bias)
        return autocast_apply(_linear_apply, "lower", input, self.weight, self.bias)
