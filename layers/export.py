"""Deployment helpers: make fake-quantized models exportable, and check an ONNX export in onnxruntime.

Taught in the chapter "Custom layers in practice" (``book/practice.ipynb``).

``torch.export`` (and the dynamo-based ONNX exporter built on it) traces a
custom ``autograd.Function`` by running its ``forward`` on symbolic tensors, so
a layer whose forward is made of standard torch ops exports as those ops: that
is the *decomposition* of the custom Function. Sub-8-bit fake quantization has
no ONNX operator of its own (``QuantizeLinear`` is 8-bit), and it exports as
``Mul``, ``Round``, ``Max``/``Min`` and ``Sub`` instead. One op of that
decomposition, ``fmax``/``fmin`` (maximum that ignores NaN), has no ONNX
translation in the exporter; :func:`onnx_translations` registers one
(``Max`` plus ``IsNaN``/``Where``) and :func:`onnx_roundtrip` passes it on.

What does not trace are checks that read tensor *values* in Python (an
observer asking "have I seen data yet?", a validation of a scale buffer).
:func:`freeze_quantizers` replaces every trained
:class:`~layers.quantization.FakeQuantize` by its frozen, export-friendly form:
activation quantizers become :class:`FrozenFakeQuantize` with Python-number
parameters, and weight quantizers are applied once to the weights.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["FrozenFakeQuantize", "freeze_quantizers", "onnx_translations", "onnx_roundtrip"]


class FrozenFakeQuantize(nn.Module):
    r"""Fake quantization with constant parameters, :math:`y = (\operatorname{clamp}(\lfloor x/s \rceil + z) - z)\,s`.

    The same arithmetic as :func:`layers.quantization.fake_quantize` (it calls
    :class:`~layers.quantization.FakeQuantizeFunction`), with ``scale`` and
    ``zero_point`` stored as Python numbers, so tracing sees constants and no
    value-dependent check.

    Args:
        scale: step size :math:`s > 0`.
        zero_point: integer :math:`z`.
        quant_min: smallest integer level.
        quant_max: largest integer level.

    Shape:
        - Input: :math:`(*)`.
        - Output: :math:`(*)`, same shape.

    Examples:
        >>> FrozenFakeQuantize(0.5, 0, -4, 3)(torch.tensor([0.26, -1.0, 9.0]))
        tensor([ 0.5000, -1.0000,  1.5000])
    """

    def __init__(self, scale: float, zero_point: int, quant_min: int, quant_max: int) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"FrozenFakeQuantize: expected a positive scale, got {scale}")
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.quant_min, self.quant_max = int(quant_min), int(quant_max)

    def forward(self, x: Tensor) -> Tensor:
        from .quantization import FakeQuantizeFunction

        return FakeQuantizeFunction.apply(x, self.scale, self.zero_point, self.quant_min, self.quant_max)[0]

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}, range=[{self.quant_min}, {self.quant_max}]"


@torch.no_grad()
def freeze_quantizers(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose fake quantizers are frozen for export.

    Every :class:`~layers.quantization.FakeQuantize` child named ``weight_quant``
    is applied once to its parent's ``weight`` (which then holds the quantized
    values) and replaced by ``nn.Identity``; every other per-tensor
    ``FakeQuantize`` becomes a :class:`FrozenFakeQuantize`; one with fake
    quantization disabled becomes ``nn.Identity``. The outputs of the copy equal
    the eval-mode outputs of ``model``.

    Args:
        model: a model after quantization-aware training or calibration.

    Returns:
        The frozen copy (``model`` is not changed).

    Raises:
        NotImplementedError: a per-channel activation quantizer, or an LSQ/PACT quantizer.
    """
    from .quantization import FakeQuantize, LSQQuantizer, PACTQuantizer

    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (LSQQuantizer, PACTQuantizer)):
                raise NotImplementedError(f"freeze_quantizers: {type(child).__name__} is not supported")
            if not isinstance(child, FakeQuantize):
                continue
            if not child.fake_quant_enabled:
                setattr(parent, name, nn.Identity())
            elif name == "weight_quant":
                parent.weight.copy_(child(parent.weight))      # quantize the weight once
                setattr(parent, name, nn.Identity())
            elif child.ch_axis is None:
                setattr(parent, name, FrozenFakeQuantize(child.scale.item(), int(child.zero_point.item()),
                                                         child.quant_min, child.quant_max))
            else:
                raise NotImplementedError("freeze_quantizers: per-channel activation quantizers are not supported")
    return model


def onnx_translations() -> dict:
    """ONNX translations (onnxscript functions) for the ops of our decompositions that the exporter lacks.

    ``torch.fmax(a, b)`` / ``torch.fmin(a, b)`` return the other argument where
    one is NaN (unlike ONNX ``Max``/``Min``, which propagate NaN), so they are
    written as ``Where(IsNaN(b), a, Where(IsNaN(a), b, Max(a, b)))``. Pass the
    result as ``custom_translation_table`` to ``torch.onnx.export(..., dynamo=True)``.
    """
    from onnxscript import opset18 as op

    def fmax(a, b):
        return op.Where(op.IsNaN(b), a, op.Where(op.IsNaN(a), b, op.Max(a, b)))

    def fmin(a, b):
        return op.Where(op.IsNaN(b), a, op.Where(op.IsNaN(a), b, op.Min(a, b)))

    return {torch.ops.aten.fmax.default: fmax, torch.ops.prims.fmax.default: fmax,
            torch.ops.aten.fmin.default: fmin, torch.ops.prims.fmin.default: fmin}


def onnx_roundtrip(model: nn.Module, *inputs: Tensor, path: str | None = None):
    """Export ``model`` with the dynamo-based ONNX exporter and run it in onnxruntime.

    Needs the ``onnx``, ``onnxscript`` and ``onnxruntime`` packages.

    Args:
        model: the model (put it in eval mode first).
        *inputs: example inputs; they are also the inputs onnxruntime runs on.
        path: where to save the ``.onnx`` file (a string or path-like); a temporary file if ``None``.

    Returns:
        ``(outputs, model_proto)``: the onnxruntime outputs as a list of tensors,
        and the exported ``onnx.ModelProto`` (to inspect its operators).
    """
    import onnxruntime

    program = torch.onnx.export(model, tuple(inputs), dynamo=True, verbose=False,
                                custom_translation_table=onnx_translations())
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(path) if path is not None else Path(tmp) / "model.onnx"
        program.save(str(file))
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
    return outputs, program.model_proto
