"""Deployment: torch.export and ONNX (dynamo exporter, run with onnxruntime) of models built from
``layers``, sub-8-bit fake quantization included; state_dict round trips; safe loading."""

import importlib.util
import io
import pickle

import pytest
import torch
from torch import nn

from layers.activations import ReLU
from layers.export import FrozenFakeQuantize, freeze_quantizers, onnx_roundtrip
from layers.linear import Linear
from layers.quantization import calibrate, convert_to_qat

# only the ONNX tests need onnxruntime and onnxscript (third-party); every other test always runs
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="onnxruntime and onnxscript are needed to run exported ONNX models")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Linear(64, 32), ReLU(), Linear(32, 10)).eval()


def torch_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def run_onnx(model: nn.Module, x: torch.Tensor, tmp_path) -> tuple[torch.Tensor, object]:
    """Export with the dynamo-based exporter, run in onnxruntime; returns (output, ModelProto)."""
    (out,), proto = onnx_roundtrip(model, x, path=tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").stat().st_size > 0
    return out, proto


def test_torch_export_matches_eager():
    model, x = mlp(), torch.rand(5, 64)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x), atol=0, rtol=0)


@needs_onnx
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    model, x = mlp(), torch.rand(5, 64)
    out, proto = run_onnx(model, x, tmp_path)
    with torch.no_grad():
        expected = model(x)
    assert (out - expected).abs().max().item() < 1e-5
    assert {n.op_type for n in proto.graph.node} & {"Gemm", "MatMul"}


@needs_onnx
def test_onnx_export_of_4bit_fake_quantization(tmp_path):
    """Sub-8-bit fake quantization has no ONNX QuantizeLinear equivalent; the exporter traces the
    Function's forward into standard ops (Div/Mul, Round, Max/Min or Clip), its documented decomposition."""
    model = convert_to_qat(mlp().train(), weight_bits=4, act_bits=4)
    x = torch.rand(16, 64)
    calibrate(model, x)
    model.eval()
    frozen = freeze_quantizers(model)
    assert any(isinstance(m, FrozenFakeQuantize) for m in frozen.modules())
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(frozen(x), expected, atol=0, rtol=0)
    out, proto = run_onnx(frozen, x, tmp_path)
    ops = {n.op_type for n in proto.graph.node}
    assert "Round" in ops, ops
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "only standard ONNX ops"
    assert (out - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("direction", ["layers->torch", "torch->layers"])
def test_state_dict_round_trip(tmp_path, direction):
    ours, theirs = mlp(), torch_mlp()
    src, dst = (ours, theirs) if direction == "layers->torch" else (theirs, ours)
    if direction == "torch->layers":
        torch.manual_seed(1)
        for p in src.parameters():
            nn.init.normal_(p)
    torch.save(src.state_dict(), tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    loaded = dst.load_state_dict(state)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    assert set(state) == set(dst.state_dict())
    x = torch.rand(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), atol=0, rtol=0)


class _Payload:
    """An object whose unpickling calls an arbitrary function: here a harmless print."""

    def __reduce__(self):
        return (print, ("code ran during torch.load",))


def test_weights_only_refuses_untrusted_pickle(capsys):
    buf = io.BytesIO()
    torch.save({"weight": torch.ones(2), "extra": _Payload()}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(buf, weights_only=True)
    assert "code ran" not in capsys.readouterr().out
    buf.seek(0)
    torch.load(buf, weights_only=False)                        # the unsafe path runs the payload
    assert "code ran during torch.load" in capsys.readouterr().out
