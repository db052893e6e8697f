r"""Batch normalization and layer normalization with hand-written backward passes.

Taught in the chapter "Convolutions and normalization" (``book/convolutions.ipynb``).

Both normalize with statistics :math:`\mu, \sigma^2` over some dimensions,
:math:`\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}`, then scale and shift,
:math:`y = \gamma \hat x + \beta`. :func:`batch_norm` takes the statistics per
channel over every dimension but the channel one (``(N, H, W)`` for images);
:func:`layer_norm` takes them per sample over the last dimensions.

The backward is the compact closed form (derived in the chapter). With
:math:`g = \partial L/\partial y`, :math:`\tilde g = \gamma g` and bars for means
over the :math:`M` values of each statistic:

.. math::

    \frac{\partial L}{\partial x} = \frac{1}{\sqrt{\sigma^2 + \epsilon}}
        \big( \tilde g - \bar{\tilde g} - \hat x\, \overline{\tilde g \hat x} \big), \qquad
    \frac{\partial L}{\partial \gamma} = \textstyle\sum g \hat x, \qquad
    \frac{\partial L}{\partial \beta} = \textstyle\sum g,

so backward needs only ``x`` and :math:`\gamma`, not the intermediate tensors
autograd would save for the formula written out op by op: it recomputes
:math:`\mu, \sigma^2` and :math:`\hat x` from ``x`` (three elementwise passes).
Because it recomputes them with differentiable torch ops, the same backward is
also differentiable (``gradgradcheck`` passes): autograd sees how the
statistics depend on ``x``.

Low precision: for float16 and bfloat16 inputs the statistics and every sum
are accumulated in float32 (``x`` is cast once, the result cast back), as
PyTorch's kernels do; a variance summed in float16 overflows or loses the
small differences it measures. The parameters may be float32 while the input
is float16/bfloat16 (what ``torch.autocast`` produces after a convolution);
the output has the input's dtype, as for :func:`torch.nn.functional.batch_norm`
and :func:`torch.nn.functional.layer_norm` under CPU autocast.

Transforms: every Function has ``generate_vmap_rule = True`` (``torch.func.vmap``)
and a ``jvp`` (forward-mode AD, ``torch.func.jvp`` / ``jacfwd``). Dynamo cannot
trace a Function that defines ``jvp``, so under ``torch.compile`` the functional
forms apply a copy of each Function without it (same forward and backward).
In training, the running statistics are updated inside ``BatchNormFunction``'s
forward, on tensors that carry no gradient, as PyTorch's own batch-norm kernel
does: the update is no part of the differentiated computation, and because the
Function's forward runs below the ``torch.func`` transforms, ``jacrev``/``jacfwd``
through a training-mode batch norm with running statistics work.

The package: ``layers.normalization.batchnorm`` (:func:`batch_norm`, :class:`BatchNorm2d` and
their Functions), ``layers.normalization.layernorm`` (:func:`layer_norm`, :class:`LayerNorm`),
and ``layers.normalization._common``, the statistics and checks they share; every name is
importable from ``layers.normalization``.
"""

from .batchnorm import BatchNorm2d, BatchNormEvalFunction, BatchNormFunction, batch_norm
from .layernorm import LayerNorm, LayerNormFunction, layer_norm

__all__ = [
    "BatchNormFunction", "BatchNormEvalFunction", "LayerNormFunction",
    "batch_norm", "layer_norm", "BatchNorm2d", "LayerNorm",
]

# Public names report the package as their module (as torch does for torch.nn, and as
# layers.quantization does): the API page, cross-references such as ``layers.BatchNorm2d`` and
# pickles all use ``layers.normalization.<name>``.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
