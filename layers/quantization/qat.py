"""Quantization-aware training modules: FakeQuantize, QuantLinear, QuantConv2d, conversion,
calibration, and the frozen form used for export.

Part of :mod:`layers.quantization`, taught in the chapter "Quantization-aware training"
(deployment in "Custom layers in practice").

* :class:`FakeQuantize`: an observer and :func:`~layers.quantization.fake_quantize`, switchable.
* :class:`QuantLinear` and :class:`QuantConv2d`: weights per output channel, activations per
  tensor. :func:`convert_to_qat` swaps the :class:`~layers.linear.Linear` and
  :class:`~layers.conv.Conv2d` layers of a float model for these; :func:`calibrate` runs the
  observers for post-training quantization; :func:`quantizers` lists the quantizers of a model.
* ``freeze_quantizers`` and ``FrozenFakeQuantize``: a trained model with constant
  quantization parameters, for ``torch.export`` and ONNX (re-exported by :mod:`layers.export`).

A model of these modules runs under ``torch.compile(fullgraph=True)`` and ``torch.export`` in
training mode (observers update their buffers in place) and eval mode; learned quantizers
must be initialized by one eager call (or :func:`calibrate`) first.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..composable import values_checkable
from ..conv import Conv2d, conv2d
from ..linear import Linear, linear
from .fake import check_bits, fake_quantize, quant_range
from .learned import LSQQuantizer, PACTQuantizer
from .observers import make_observer

__all__ = ["FakeQuantize", "QuantLinear", "QuantConv2d", "quantizers", "convert_to_qat", "calibrate",
           "FrozenFakeQuantize", "freeze_quantizers"]


class FakeQuantize(nn.Module):
    r"""Observer + :func:`fake_quantize`: watches the tensors it is given, and quantizes them.

    In training mode with the observer enabled, each call updates the observer and copies its
    ``(scale, zero_point)`` into buffers; in eval mode the buffers are frozen (so evaluating
    on test data never moves the range). :meth:`FakeQuantize.enable_fake_quant` ``(False)`` passes tensors
    through unchanged; together with the observer this is calibration mode (see :func:`calibrate`).

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range (weights) or asymmetric unsigned (activations).
        ch_axis: channel dimension for per-channel quantization, or ``None`` (per tensor).
        observer: ``"minmax"``, ``"moving_average"`` or ``"mse"``.
        averaging_constant: for the moving-average observers.
        channels: number of channels along ``ch_axis``.
        device, dtype: of the ``scale`` buffer and the observer (default: float32 on the
            default device); ``zero_point`` is int32.

    Attributes:
        scale: current step size(s), float32 buffer, shape ``(1,)`` or ``(C,)``.
        zero_point: current zero point(s), int32 buffer.
        observer_enabled: whether training-mode calls update the range.
        fake_quant_enabled: whether the output is quantized.

    Examples:
        >>> fq = FakeQuantize(bits=4)
        >>> y = fq(torch.linspace(0, 1, 5))
        >>> fq.scale, fq.zero_point
        (tensor([0.0667]), tensor([0], dtype=torch.int32))
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None,
                 observer: str = "moving_average", averaging_constant: float = 0.01, channels: int = 1,
                 *, device=None, dtype=None) -> None:
        super().__init__()
        self.bits, self.symmetric, self.ch_axis = check_bits("FakeQuantize", bits), symmetric, ch_axis
        self.quant_min, self.quant_max = quant_range(bits, symmetric)
        n = 1 if ch_axis is None else channels
        self.observer = make_observer(observer, bits, symmetric, ch_axis, averaging_constant, n,
                                      device=device, dtype=dtype)
        self.register_buffer("scale", torch.ones(n, device=device, dtype=dtype or torch.float32))
        self.register_buffer("zero_point", torch.zeros(n, device=device, dtype=torch.int32))
        self.observer_enabled = True
        self.fake_quant_enabled = True

    def enable_observer(self, enabled: bool = True) -> FakeQuantize:
        """Let training-mode calls update the range (``False`` freezes it). Returns ``self``."""
        self.observer_enabled = enabled
        return self

    def enable_fake_quant(self, enabled: bool = True) -> FakeQuantize:
        """Quantize the output (``False`` passes tensors through unchanged). Returns ``self``."""
        self.fake_quant_enabled = enabled
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:                                             # nothing to observe or round
            return x.clone()
        if self.observer_enabled and self.training:
            self.observer(x.detach())
            scale, zero_point = self.observer.calculate_qparams()
            with torch.no_grad():                                      # in place: traceable buffer updates
                self.scale.copy_(scale.reshape(-1))
                self.zero_point.copy_(zero_point.reshape(-1))
        if not self.fake_quant_enabled:
            return x
        if values_checkable(self.observer.min_val) and not self.observer.observed:
            raise RuntimeError("FakeQuantize: no range yet; call it in training mode (or calibrate) first")
        if self.ch_axis is None:
            return fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
        return fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max, axis=self.ch_axis)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, symmetric={self.symmetric}, ch_axis={self.ch_axis}, "
                f"observer_enabled={self.observer_enabled}, fake_quant_enabled={self.fake_quant_enabled}")


def _act_quantizer(method: str, bits: int, observer: str, **factory):
    if method == "ste":
        return FakeQuantize(bits, symmetric=False, observer=observer,
                            averaging_constant=1.0 if observer == "mse" else 0.01, **factory)
    if method == "lsq":
        return LSQQuantizer(bits, symmetric=False, **factory)
    if method == "pact":
        return PACTQuantizer(bits, **factory)
    raise ValueError(f"expected method 'ste', 'lsq' or 'pact', got {method!r}")


def _weight_quantizer(method: str, bits: int, observer: str, channels: int, **factory):
    if method == "lsq":
        return LSQQuantizer(bits, symmetric=True, ch_axis=0, channels=channels, **factory)
    # weights change every step: track the current range (averaging constant 1)
    return FakeQuantize(bits, symmetric=True, ch_axis=0, observer="mse" if observer == "mse" else "moving_average",
                        averaging_constant=1.0, channels=channels, **factory)


# ------------------------------------------------------------------------------- layers
class QuantLinear(Linear):
    r"""A :class:`~layers.linear.Linear` that fake-quantizes its input (per tensor) and its
    weight (per output channel, symmetric) before the affine map:
    :math:`y = Q_a(x)\, Q_w(W)^\top + b`. The bias stays in float.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias.
        weight_bits: bit width of the weights, 2 to 16.
        act_bits: bit width of the input activations, 2 to 16.
        method: how the quantizers learn: ``"ste"`` (observed ranges, straight-through
            estimator), ``"lsq"`` (learned step sizes) or ``"pact"`` (learned activation clip;
            weights as ``"ste"``).
        observer: for ``"ste"``: ``"moving_average"`` / ``"minmax"`` (activations) or
            ``"mse"`` (both weights and activations, clip by :func:`mse_clip_search`).

    Attributes:
        weight, bias: as :class:`~layers.linear.Linear` (same names, so ``load_state_dict`` of
            a float model's weights works with ``strict=False``).
        act_quant: quantizer of the input.
        weight_quant: quantizer of the weight.

    Examples:
        >>> layer = QuantLinear(4, 3, weight_bits=4, act_bits=4)
        >>> layer(torch.rand(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: int = 8,
                 act_bits: int = 8, method: str = "ste", observer: str = "moving_average",
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight_bits, self.act_bits, self.method = weight_bits, act_bits, method
        factory = dict(device=device, dtype=dtype)
        self.act_quant = _act_quantizer(method, act_bits, observer, **factory)
        self.weight_quant = _weight_quantizer(method, weight_bits, observer, out_features, **factory)

    @classmethod
    def from_float(cls, module: Linear, **kwargs) -> QuantLinear:
        """A :class:`QuantLinear` with ``module``'s shape and a copy of its parameters."""
        new = cls(module.in_features, module.out_features, module.bias is not None,
                  device=module.weight.device, dtype=module.weight.dtype, **kwargs)
        new.load_state_dict(module.state_dict(), strict=False)
        new.train(module.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", weight_bits={self.weight_bits}, act_bits={self.act_bits}, "
                f"method={self.method!r}")


class QuantConv2d(Conv2d):
    r"""A :class:`~layers.conv.Conv2d` that fake-quantizes its input (per tensor) and its
    weight (per output channel, symmetric) before the convolution: :math:`y = Q_a(x) \star Q_w(W) + b`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            :class:`~layers.conv.Conv2d`.
        weight_bits: bit width of the weights, 2 to 16.
        act_bits: bit width of the input activations, 2 to 16.
        method: ``"ste"``, ``"lsq"`` or ``"pact"``, as :class:`QuantLinear`.
        observer: ``"moving_average"``, ``"minmax"`` or ``"mse"``, as :class:`QuantLinear`.

    Attributes:
        weight, bias: as :class:`~layers.conv.Conv2d`.
        act_quant: quantizer of the input.
        weight_quant: quantizer of the weight.

    Examples:
        >>> conv = QuantConv2d(1, 4, 3, padding=1, weight_bits=4, act_bits=4)
        >>> conv(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, weight_bits: int = 8,
                 act_bits: int = 8, method: str = "ste", observer: str = "moving_average",
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.weight_bits, self.act_bits, self.method = weight_bits, act_bits, method
        factory = dict(device=device, dtype=dtype)
        self.act_quant = _act_quantizer(method, act_bits, observer, **factory)
        self.weight_quant = _weight_quantizer(method, weight_bits, observer, out_channels, **factory)

    @classmethod
    def from_float(cls, module: Conv2d, **kwargs) -> QuantConv2d:
        """A :class:`QuantConv2d` with ``module``'s configuration and a copy of its parameters."""
        new = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                  padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=module.bias is not None, device=module.weight.device,
                  dtype=module.weight.dtype, **kwargs)
        new.load_state_dict(module.state_dict(), strict=False)
        new.train(module.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return conv2d(self.act_quant(x), self.weight_quant(self.weight), self.bias,
                      self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", weight_bits={self.weight_bits}, act_bits={self.act_bits}, "
                f"method={self.method!r}")


def quantizers(model: nn.Module) -> Iterator[nn.Module]:
    """Every :class:`FakeQuantize`, :class:`LSQQuantizer` and :class:`PACTQuantizer` in ``model``."""
    for m in model.modules():
        if isinstance(m, (FakeQuantize, LSQQuantizer, PACTQuantizer)):
            yield m


def convert_to_qat(model: nn.Module, *, weight_bits: int = 8, act_bits: int = 8, method: str = "ste",
                   observer: str = "moving_average") -> nn.Module:
    """Replace, in place, every :class:`~layers.linear.Linear` (and :class:`~layers.conv.Conv2d`)
    of ``model`` by :class:`QuantLinear` (:class:`QuantConv2d`) with the same parameters.

    Args:
        model: a float model built from ``layers`` modules (it may itself be a layer).
        weight_bits: bit width of every weight.
        act_bits: bit width of every quantized layer's input.
        method: ``"ste"``, ``"lsq"`` or ``"pact"`` (see :class:`QuantLinear`).
        observer: ``"moving_average"``, ``"minmax"`` or ``"mse"``.

    Returns:
        ``model`` (or the new layer, if ``model`` itself is a layer). Run :func:`calibrate` (or
        a training step) next, to set the quantization ranges.

    Examples:
        >>> model = nn.Sequential(Linear(64, 32), nn.ReLU(), Linear(32, 10))
        >>> model = convert_to_qat(model, weight_bits=4, act_bits=4)
        >>> type(model[0]).__name__
        'QuantLinear'
    """
    kwargs = dict(weight_bits=weight_bits, act_bits=act_bits, method=method, observer=observer)
    check_bits("convert_to_qat", weight_bits)
    check_bits("convert_to_qat", act_bits)
    _act_quantizer(method, act_bits, observer)                         # validates method / observer
    swap: dict[type, type] = {Linear: QuantLinear, Conv2d: QuantConv2d}
    if type(model) in swap:
        return swap[type(model)].from_float(model, **kwargs)
    for name, child in model.named_children():
        if type(child) in swap:
            setattr(model, name, swap[type(child)].from_float(child, **kwargs))
        else:
            convert_to_qat(child, **kwargs)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, *inputs: Tensor) -> nn.Module:
    """Post-training calibration: run ``inputs`` through ``model`` with every observer on and
    fake quantization off (float activations, so each range is that of the float model), then
    freeze the observers and turn fake quantization on. LSQ quantizers initialize their scale.

    The rest of the model stays in eval mode (batch norm statistics do not move).

    Args:
        model: a model after :func:`convert_to_qat`.
        inputs: calibration batch(es) passed as ``model(*inputs)``.

    Returns:
        ``model``, in eval mode, ready to evaluate as a post-training-quantized model.
    """
    model.eval()
    fqs = list(quantizers(model))
    for q in fqs:
        q.train()
        if isinstance(q, FakeQuantize):
            q.enable_observer(True).enable_fake_quant(False)
        if isinstance(q, (LSQQuantizer, PACTQuantizer)):
            q.initialized.fill_(False)
    # LSQ and PACT quantizers initialize from their inputs, then quantize during the pass
    model(*inputs)
    for q in fqs:
        q.eval()
        if isinstance(q, FakeQuantize):
            q.enable_observer(False).enable_fake_quant(True)
    return model


# ------------------------------------------------------------------- frozen, for export
class FrozenFakeQuantize(nn.Module):
    r"""Fake quantization with constant parameters, :math:`y = (\operatorname{clamp}(\lfloor x/s \rceil + z) - z)\,s`.

    The same arithmetic as :func:`~layers.quantization.fake_quantize`, with ``scale``
    and ``zero_point`` stored as Python numbers, so tracing sees constants.

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
        return fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max)

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
