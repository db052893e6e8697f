"""Quantization-aware training: fake quantization, the straight-through estimator, LSQ, PACT.

Taught in the chapter "Quantization-aware training" (``book/quantization.ipynb``).

The package, from the bottom up (every name is importable from ``layers.quantization``):

* ``layers.quantization.fake``: integer ranges (:func:`quant_range`), qparams
  (:func:`qparams_from_range`), :func:`sqnr`, and :func:`fake_quantize` (per tensor, or per
  channel with ``axis=``), bit-for-bit :func:`torch.fake_quantize_per_tensor_affine` /
  :func:`torch.fake_quantize_per_channel_affine` on CPU, with the straight-through estimator
  (STE) as gradient.
* ``layers.quantization.observers``: :class:`MinMaxObserver`,
  :class:`MovingAverageMinMaxObserver` and :class:`MSEObserver`, which searches the clipping
  range that minimizes the quantization error (:func:`mse_clip_search`).
* ``layers.quantization.learned``: :func:`lsq_quantize` (learned step size, Esser et al.
  2020; output and gradients match torch's learnable fake-quantize ops, per tensor and per
  channel), :func:`pact_quantize` (PACT, Choi et al. 2018), and their modules
  :class:`LSQQuantizer` and :class:`PACTQuantizer`.
* ``layers.quantization.qat``: :class:`FakeQuantize` (observer + fake quantization,
  switchable), the layers :class:`QuantLinear` and :class:`QuantConv2d` (weights per output
  channel, activations per tensor), :func:`convert_to_qat`, :func:`calibrate`, and
  :func:`~layers.export.freeze_quantizers` / :class:`~layers.export.FrozenFakeQuantize`
  for export (documented with :mod:`layers.export`, which re-exports them).

Every Function supports ``torch.func`` (vmap, jvp), ``torch.compile(fullgraph=True)`` and
``torch.export``: checks that read tensor values run in eager mode only.
"""

from .fake import (FakeQuantizeFunction, FakeQuantizePerChannelFunction, fake_quantize, qparams_from_range,
                   quant_range, sqnr)
from .learned import LSQFunction, LSQQuantizer, PACTFunction, PACTQuantizer, lsq_quantize, pact_quantize
from .observers import MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, Observer, mse_clip_search
from .qat import (FakeQuantize, FrozenFakeQuantize, QuantConv2d, QuantLinear, calibrate, convert_to_qat,
                  freeze_quantizers, quantizers)

__all__ = [
    "quant_range", "qparams_from_range", "sqnr", "mse_clip_search",
    "FakeQuantizeFunction", "FakeQuantizePerChannelFunction", "LSQFunction", "PACTFunction",
    "fake_quantize", "lsq_quantize", "pact_quantize",
    "Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "MSEObserver",
    "FakeQuantize", "LSQQuantizer", "PACTQuantizer",
    "QuantLinear", "QuantConv2d", "convert_to_qat", "calibrate", "quantizers",
    "FrozenFakeQuantize", "freeze_quantizers",
]

# Public names report the package as their module (as torch does for torch.nn): the API page,
# cross-references such as ``layers.fake_quantize`` and pickles all use ``layers.quantization.<name>``.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
