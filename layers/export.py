"""Deployment helpers: make fake-quantized models exportable, and check an ONNX export in onnxruntime.

Taught in the chapter "Custom layers in practice" (``book/practice.ipynb``).

``torch.export`` (and the dynamo-based ONNX exporter built on it) traces a
custom ``autograd.Function`` by running its ``forward`` on symbolic tensors, so
a layer whose forward is made of standard torch ops exports as those ops: that
is the *decomposition* of the custom Function. A fake quantizer exports as
``Mul``, ``Round``, ``Max``/``Min`` and ``Sub``, which works at any bit width;
``QuantizeLinear``/``DequantizeLinear`` would cover 8 bits, 4 bits (int4/uint4,
opset 21) and 2 bits (int2/uint2, opset 25), but not 3, 5, 6 or 7. One op of that
decomposition, ``fmax``/``fmin`` (maximum that ignores NaN), has no ONNX
translation in the exporter; :func:`onnx_translations` registers one
(``Max`` plus ``IsNaN``/``Where``) and :func:`onnx_roundtrip` passes it on.

What does not trace are checks that read tensor *values* in Python (an
observer asking "have I seen data yet?", a validation of a scale buffer).
:func:`freeze_quantizers` (defined in ``layers.quantization.qat``,
re-exported here) replaces every trained
:class:`~layers.quantization.FakeQuantize` by its frozen, export-friendly form:
activation quantizers become :class:`FrozenFakeQuantize` with
Python-number parameters, and weight quantizers are applied once to the weights.
Models with the quantizers themselves also export (``torch.export`` in train and eval
mode): freezing gives the smallest graph and the ONNX decomposition.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from .quantization import FrozenFakeQuantize, freeze_quantizers

__all__ = ["FrozenFakeQuantize", "freeze_quantizers", "onnx_translations", "onnx_roundtrip"]


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
