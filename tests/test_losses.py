"""Tests for layers.losses: MSE, cross-entropy, binary and softmax focal loss."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layers.linear import Linear
from layers.losses import (
    CrossEntropyLoss, FocalLoss, MSELoss, SoftmaxFocalLoss,
    cross_entropy, focal_loss, mse_loss, softmax_focal_loss,
)
from layers.references import sigmoid_focal_loss as torchvision_sigmoid_focal_loss   # torchvision's formula
from layers.references import softmax_focal_loss as reference_softmax_focal
from layers.testing import check_layer


DTYPES = [torch.float64, torch.float32]


def leaf(*shape, dtype=torch.float64, scale=1.0):
    return (torch.randn(shape, dtype=dtype) * scale).requires_grad_(True)


def grads(fn, *args):
    """Output and gradients of ``fn(*args)`` w.r.t. its floating leaves, for a fixed upstream gradient."""
    args = [a.detach().clone().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a for a in args]
    out = fn(*args)
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    gs = torch.autograd.grad(out, leaves, torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape))
    return out, gs


# ------------------------------------------------------------------------- MSE
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(3, 2), (4,), (2, 3, 1)])
def test_mse_check_layer(dtype, reduction, shape):
    x, t = leaf(*shape, dtype=dtype), leaf(*shape, dtype=dtype)
    # torch.compile costs seconds per call: once per reduction (float64, 2-D) is enough to show it traces
    check_layer(MSELoss(reduction), nn.MSELoss(reduction=reduction), (x, t),
                gradcheck=dtype == torch.float64, gradgradcheck=dtype == torch.float64,
                compile=dtype == torch.float64 and shape == (3, 2))


def test_mse_target_without_grad_and_0_dim():
    check_layer(lambda a, b: mse_loss(a, b), F.mse_loss, (leaf(3, 2), torch.randn(3, 2, dtype=torch.float64)))
    check_layer(lambda a, b: mse_loss(a, b), F.mse_loss, (leaf(), leaf()), empty_batch=False, noncontiguous=False)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("x_shape,t_shape", [((3, 1), (4,)), ((2, 3), (3,)), ((3,), (2, 3))])
def test_mse_broadcasts_like_torch(reduction, x_shape, t_shape):
    x, t = leaf(*x_shape), leaf(*t_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, ours_g = grads(lambda a, b: mse_loss(a, b, reduction), x, t)
        ref, ref_g = grads(lambda a, b: F.mse_loss(a, b, reduction=reduction), x, t)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_g, ref_g)
    with pytest.warns(UserWarning, match="broadcast"):
        mse_loss(x, t)
    torch.autograd.gradgradcheck(lambda a, b: mse_loss(a, b, reduction), (x, t))


def test_mse_promotes_dtypes_like_torch():
    x, t = torch.randn(3), torch.randn(3, dtype=torch.float64)
    assert mse_loss(x, t).dtype == F.mse_loss(x, t).dtype == torch.float64


# ---------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("with_ignored", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
def test_cross_entropy_check_layer(dtype, reduction, label_smoothing, with_ignored, with_weight):
    x = leaf(4, 3, dtype=dtype)
    y = torch.tensor([0, 2, 1, 2])
    if with_ignored:
        y[2] = -100
    w = torch.tensor([0.3, 1.0, 2.0], dtype=dtype) if with_weight else None
    # compile: per reduction, with every option off and with every option on (float64)
    all_on_or_off = with_ignored == with_weight == (label_smoothing > 0)
    check_layer(CrossEntropyLoss(w, reduction=reduction, label_smoothing=label_smoothing),
                nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=label_smoothing), (x, y),
                gradcheck=dtype == torch.float64, gradgradcheck=dtype == torch.float64,
                compile=dtype == torch.float64 and all_on_or_off)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("with_weight", [False, True])
def test_cross_entropy_probability_targets(reduction, label_smoothing, with_weight):
    x = leaf(3, 4, 2)
    t = torch.rand(3, 4, 2, dtype=torch.float64).requires_grad_(True)       # unnormalized, as torch's samples
    w = torch.tensor([0.3, 1.0, 2.0, 0.5], dtype=torch.float64) if with_weight else None
    # the class weight follows the input's dtype, as a module's buffer would (check_layer casts the
    # inputs, not a tensor held in a closure; a float64 weight would turn torch's result float64)
    cast = lambda a: None if w is None else w.to(a.dtype)                    # noqa: E731
    check_layer(lambda a, b: cross_entropy(a, b, cast(a), reduction=reduction, label_smoothing=label_smoothing),
                lambda a, b: F.cross_entropy(a, b, cast(a), reduction=reduction, label_smoothing=label_smoothing),
                (x, t), batch_inputs=[0, 1], compile=with_weight == (label_smoothing > 0))   # all off / all on


@pytest.mark.parametrize("logit_shape,target_shape", [((2, 3, 4), (2, 4)), ((2, 3, 2, 2), (2, 2, 2)), ((5,), ())])
def test_cross_entropy_other_shapes(logit_shape, target_shape):
    x = leaf(*logit_shape)
    C = logit_shape[0] if len(logit_shape) == 1 else logit_shape[1]
    y = torch.randint(0, C, target_shape)
    w = torch.rand(C, dtype=torch.float64) + 0.5                  # follows the input's dtype, as a buffer
    check_layer(lambda a, b: cross_entropy(a, b, w.to(a.dtype), label_smoothing=0.1),
                lambda a, b: F.cross_entropy(a, b, w.to(a.dtype), label_smoothing=0.1), (x, y),
                empty_batch=len(logit_shape) > 1)


def test_cross_entropy_custom_ignore_index_and_all_ignored():
    x, y = leaf(4, 3), torch.tensor([0, 7, 2, 1])
    check_layer(lambda a, b: cross_entropy(a, b, ignore_index=7),
                lambda a, b: F.cross_entropy(a, b, ignore_index=7), (x, y))
    y = torch.tensor([1, 1, 1, 1])                                  # every row ignored: NaN loss, zero gradient
    ours, ours_g = grads(lambda a: cross_entropy(a, y, ignore_index=1, label_smoothing=0.1), x)
    ref, ref_g = grads(lambda a: F.cross_entropy(a, y, ignore_index=1, label_smoothing=0.1), x)
    torch.testing.assert_close(ours, ref, equal_nan=True)
    torch.testing.assert_close(ours_g, ref_g)


def test_cross_entropy_keywords_and_module_buffer_like_torch():
    x, y, w = torch.randn(4, 3), torch.tensor([0, 2, 1, 2]), torch.tensor([0.2, 1.0, 3.0])
    kw = dict(input=x, target=y, weight=w, ignore_index=2, reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(cross_entropy(**kw), F.cross_entropy(**kw))
    ours, ref = CrossEntropyLoss(weight=w), nn.CrossEntropyLoss(weight=w)
    assert ours.state_dict().keys() == ref.state_dict().keys() == {"weight"}
    assert "weight" in dict(ours.named_buffers()) and CrossEntropyLoss().weight is None
    torch.testing.assert_close(ours(input=x, target=y), ref(input=x, target=y))


def test_cross_entropy_large_logits_stay_finite():
    x = torch.tensor([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]], requires_grad=True)
    y = torch.tensor([2, 1])
    ours, ours_g = grads(lambda a: cross_entropy(a, y, label_smoothing=0.1), x)
    ref, ref_g = grads(lambda a: F.cross_entropy(a, y, label_smoothing=0.1), x)
    assert torch.isfinite(ours) and torch.isfinite(ours_g[0]).all()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_g, ref_g)


# ------------------------------------------------------------------- focal loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_matches_torchvision_formula(dtype, gamma, alpha, reduction):
    x = leaf(4, 2, dtype=dtype, scale=2.0)
    t = (torch.rand(4, 2) > 0.6).to(dtype)
    # compile: per reduction, gamma 0 without alpha and gamma 2 with it (float64)
    check_layer(FocalLoss(alpha, gamma, reduction),
                lambda a, b: torchvision_sigmoid_focal_loss(a, b, alpha, gamma, reduction), (x, t),
                gradcheck=dtype == torch.float64, gradgradcheck=dtype == torch.float64,
                compile=dtype == torch.float64 and (gamma, alpha) in ((0.0, -1.0), (2.0, 0.25)))


@pytest.mark.parametrize("alpha,gamma", [(0.5, 1.5), (-1.0, 2.0), (0.25, 0.0)])
def test_focal_soft_targets_get_a_gradient(alpha, gamma):
    x, t = leaf(4, 3), torch.rand(4, 3, dtype=torch.float64).requires_grad_(True)
    check_layer(lambda a, b: focal_loss(a, b, alpha, gamma, "sum"),
                lambda a, b: torchvision_sigmoid_focal_loss(a, b, alpha, gamma, "sum"), (x, t))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weight_shape,pos_weight_shape", [(None, None), ((1, 5), None), ((3, 5), (5,)), (None, (5,))])
def test_focal_gamma_zero_is_bce_with_logits(reduction, weight_shape, pos_weight_shape):
    x, t = leaf(3, 5), torch.rand(3, 5, dtype=torch.float64).requires_grad_(True)
    w = None if weight_shape is None else torch.rand(weight_shape, dtype=torch.float64)
    pw = None if pos_weight_shape is None else torch.rand(pos_weight_shape, dtype=torch.float64) * 3
    check_layer(lambda a, b: focal_loss(a, b, alpha=-1, gamma=0.0, reduction=reduction, weight=w, pos_weight=pw),
                lambda a, b: F.binary_cross_entropy_with_logits(a, b, weight=w, pos_weight=pw, reduction=reduction),
                (x, t), batch_inputs=[0, 1], empty_batch=weight_shape is None or weight_shape[0] == 1,
                compile=(weight_shape is None) == (pos_weight_shape is None))       # neither or both weights


def test_focal_with_pos_weight_and_gamma():
    x, t = leaf(3, 4, scale=2.0), (torch.rand(3, 4) > 0.5).double()
    pw = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)

    def reference(a, b):
        bce = F.binary_cross_entropy_with_logits(a, b, pos_weight=pw, reduction="none")
        p = torch.sigmoid(a)
        return ((0.25 * b + 0.75 * (1 - b)) * (1 - (p * b + (1 - p) * (1 - b))) ** 1.5 * bce).sum()
    check_layer(lambda a, b: focal_loss(a, b, gamma=1.5, reduction="sum", pos_weight=pw), reference, (x, t))


@pytest.mark.parametrize("gamma", [0.3, 0.5, 2.0])
def test_focal_large_logits_no_nan(gamma):
    x = torch.tensor([-200.0, -50.0, -20.0, 0.0, 20.0, 50.0, 200.0], requires_grad=True)
    for t in (torch.zeros(7), torch.ones(7)):
        x.grad = None
        loss = focal_loss(x, t, gamma=gamma, reduction="sum")
        loss.backward()
        assert torch.isfinite(loss), loss
        assert torch.isfinite(x.grad).all(), x.grad
    # the confidently right end has zero gradient, the confidently wrong end a finite, non-zero one
    assert x.grad[-1].abs() < 1e-12 and x.grad[0].abs() > 0.1


def test_focal_gradient_agrees_with_float64_autograd_at_gamma_below_one():
    x = torch.linspace(-30, 30, 61, dtype=torch.float64, requires_grad=True)
    t = (torch.arange(61) % 2).double()
    ours, ours_g = grads(lambda a: focal_loss(a, t, gamma=0.5, reduction="sum"), x)
    ref, ref_g = grads(lambda a: torchvision_sigmoid_focal_loss(a, t, gamma=0.5, reduction="sum"), x)
    torch.testing.assert_close(ours_g, ref_g)


# ---------------------------------------------------------- softmax focal loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("with_alpha", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_softmax_focal_check_layer(dtype, gamma, with_alpha, reduction):
    x, y = leaf(3, 3, dtype=dtype), torch.tensor([0, 2, 1])
    alpha = torch.tensor([0.2, 0.3, 0.5], dtype=dtype) if with_alpha else None
    # the reference's alpha follows the input's dtype, as the module's buffer does
    check_layer(SoftmaxFocalLoss(alpha, gamma, reduction),
                lambda a, b: reference_softmax_focal(a, b, None if alpha is None else alpha.to(a.dtype),
                                                     gamma, reduction), (x, y),
                gradcheck=dtype == torch.float64, gradgradcheck=dtype == torch.float64,
                compile=dtype == torch.float64 and (gamma, with_alpha) in ((0.0, False), (2.0, True)))


def test_softmax_focal_gamma_zero_is_cross_entropy():
    x, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    torch.testing.assert_close(softmax_focal_loss(x, y, gamma=0.0), F.cross_entropy(x, y))


@pytest.mark.parametrize("gamma", [0.3, 2.0])
def test_softmax_focal_large_logits_no_nan(gamma):
    x = torch.tensor([[500.0, 0.0, -500.0], [-500.0, 0.0, 500.0], [30.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0])
    loss = softmax_focal_loss(x, y, gamma=gamma, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert x.grad[1].abs().sum() > 0.1 and x.grad[0].abs().sum() < 1e-12


# ---------------------------------------------- torch.func, autocast, compile
T5 = torch.tensor([0, 4, 2])
W5 = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.3], dtype=torch.float64)
# (ours, torch's, inputs): the first input is differentiated
PAIRS = {
    "cross_entropy": (lambda x: cross_entropy(x, T5, W5, label_smoothing=0.1),
                      lambda x: F.cross_entropy(x, T5, W5, label_smoothing=0.1), lambda: torch.randn(3, 5).double()),
    "cross_entropy_probs": (lambda x: cross_entropy(x, torch.full((3, 5), 0.2).double(), reduction="sum"),
                            lambda x: F.cross_entropy(x, torch.full((3, 5), 0.2).double(), reduction="sum"),
                            lambda: torch.randn(3, 5).double()),
    "mse_loss": (lambda x: mse_loss(x, torch.ones(3, 5).double()), lambda x: F.mse_loss(x, torch.ones(3, 5).double()),
                 lambda: torch.randn(3, 5).double()),
    "focal_loss": (lambda x: focal_loss(x, torch.ones(3, 5).double(), reduction="mean"),
                   lambda x: torchvision_sigmoid_focal_loss(x, torch.ones(3, 5).double(), reduction="mean"),
                   lambda: torch.randn(3, 5).double()),
    "softmax_focal_loss": (lambda x: softmax_focal_loss(x, T5, gamma=2.0),
                           lambda x: reference_softmax_focal(x, T5, gamma=2.0), lambda: torch.randn(3, 5).double()),
}


@pytest.mark.parametrize("name", PAIRS)
def test_torch_func_jvp_jacrev_hessian(name):
    ours, ref, make = PAIRS[name]
    x, v = make(), make()
    torch.testing.assert_close(torch.func.jvp(ours, (x,), (v,)), torch.func.jvp(ref, (x,), (v,)))
    torch.testing.assert_close(torch.func.jacrev(ours)(x), torch.func.jacrev(ref)(x))
    torch.testing.assert_close(torch.func.hessian(ours)(x), torch.func.hessian(ref)(x))


@pytest.mark.parametrize("name", PAIRS)
def test_vmap_equals_a_loop(name):
    ours, _, make = PAIRS[name]
    xs = torch.stack([make() for _ in range(4)])                      # (B, 3, 5)
    torch.testing.assert_close(torch.func.vmap(ours)(xs), torch.stack([ours(x) for x in xs]))
    per_sample = torch.func.vmap(torch.func.grad(ours))(xs)
    torch.testing.assert_close(per_sample, torch.stack([torch.func.grad(ours)(x) for x in xs]))


def test_vmap_over_class_index_targets_and_weights():
    xs, ys = torch.randn(4, 3, 5), torch.randint(0, 5, (4, 3))
    ys[1, 0] = -100
    fn = lambda x, y: cross_entropy(x, y, W5.float(), label_smoothing=0.2)   # noqa: E731
    torch.testing.assert_close(torch.func.vmap(fn)(xs, ys), torch.stack([fn(x, y) for x, y in zip(xs, ys)]))
    ps = torch.softmax(torch.randn(4, 3, 5), -1)
    torch.testing.assert_close(torch.func.vmap(cross_entropy)(xs, ps), torch.stack([cross_entropy(x, p) for x, p in zip(xs, ps)]))


def test_per_sample_gradients_of_a_model():
    model = nn.Linear(4, 3).double()                                # the loss is what is under test
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))

    def loss(p, xi, yi):
        return cross_entropy(torch.func.functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))
    batched = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(5):
        one = torch.func.grad(loss)(params, x[i], y[i])
        for k in params:
            torch.testing.assert_close(batched[k][i], one[k])


AUTOCAST_CASES = {
    "cross_entropy": (lambda x, y, t: cross_entropy(x, y), lambda x, y, t: F.cross_entropy(x, y)),
    "cross_entropy_probs": (lambda x, y, t: cross_entropy(x, t.softmax(1)), lambda x, y, t: F.cross_entropy(x, t.softmax(1))),
    "mse_loss": (lambda x, y, t: mse_loss(x, t), lambda x, y, t: F.mse_loss(x, t)),
    "focal_loss": (lambda x, y, t: focal_loss(x, t.sigmoid(), alpha=-1, gamma=0.0, reduction="mean"),
                   lambda x, y, t: F.binary_cross_entropy_with_logits(x, t.sigmoid())),
}


@pytest.mark.parametrize("name", AUTOCAST_CASES)
def test_autocast_computes_in_float32_like_torch(name):
    ours, ref = AUTOCAST_CASES[name]
    x, t = torch.randn(8, 5).bfloat16().requires_grad_(True), torch.randn(8, 5).bfloat16()
    y = torch.randint(0, 5, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(x, y, t), ref(x, y, t)
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b)
    (g,) = torch.autograd.grad(a, x)
    assert g.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", AUTOCAST_CASES)
def test_low_precision_error_no_worse_than_torch(dtype, name):
    ours, ref = AUTOCAST_CASES[name]
    gen = torch.Generator().manual_seed(0)
    x64, t64 = torch.randn(256, 40, generator=gen, dtype=torch.float64) * 3, torch.randn(256, 40, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 40, (256,), generator=gen)
    x, t = x64.to(dtype), t64.to(dtype)
    truth = ref(x.double(), y, t.double())                           # the low-precision inputs, exactly
    err_ours = (ours(x, y, t).double() - truth).abs().max()
    err_torch = (ref(x, y, t).double() - truth).abs().max()
    assert ours(x, y, t).dtype == dtype
    assert err_ours <= 1.5 * err_torch + 1e-6, (err_ours, err_torch)


@pytest.mark.parametrize("name", ["cross_entropy", "cross_entropy_probs", "mse_loss", "focal_loss"])
def test_compile_fullgraph_forward_backward(name):
    ours, _ = AUTOCAST_CASES[name]
    torch._dynamo.reset()
    x, t, y = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5), torch.randint(0, 5, (6,))
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    out = compiled(x, y, t)
    (g,) = torch.autograd.grad(out, x)
    out_eager = ours(x, y, t)
    (g_eager,) = torch.autograd.grad(out_eager, x)
    torch.testing.assert_close(out, out_eager)
    torch.testing.assert_close(g, g_eager)


def test_export_model_with_loss():
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = Linear(4, 3)
            self.loss = CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)

        def forward(self, x, y):
            return self.loss(self.net(x), y) + focal_loss(self.net(x), torch.ones(2, 3), reduction="mean")
    model, x, y = WithLoss(), torch.randn(2, 4), torch.tensor([0, 2])
    exported = torch.export.export(model, (x, y))
    torch.testing.assert_close(exported.module()(x, y), model(x, y))


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,error,match", [
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 4, 1])), ValueError, r"in \[0, 3\].*got 4"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, -1, 1])), ValueError, r"got -1"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1])), ValueError, r"target of shape \(3,\)"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.rand(3, 5)), ValueError, r"probability target of the input's shape"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([True, False, True])), TypeError, r"class indices"),
    (lambda: cross_entropy(torch.ones(3, 4, dtype=torch.long), torch.tensor([0, 1, 2])), TypeError, "input.*floating-point"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), reduction="avg"), ValueError, "reduction"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), label_smoothing=1.5), ValueError, "label_smoothing"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), weight=torch.ones(3)), ValueError, "weight of size 4"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), weight=torch.ones(4, requires_grad=True)),
     ValueError, "weight that requires grad"),
    (lambda: CrossEntropyLoss(label_smoothing=-0.1), ValueError, "label_smoothing"),
    (lambda: mse_loss(torch.randn(3), torch.randn(4)), ValueError, r"target broadcastable with input of shape \(3,\)"),
    (lambda: mse_loss(torch.randn(3), torch.ones(3, dtype=torch.long)), TypeError, "target.*floating-point"),
    (lambda: focal_loss(torch.randn(3), torch.ones(2)), ValueError, r"target of shape \(3,\)"),
    (lambda: focal_loss(torch.randn(3), torch.ones(3), gamma=-1.0), ValueError, "gamma >= 0"),
    (lambda: focal_loss(torch.randn(3), torch.ones(3, dtype=torch.long)), TypeError, "target.*floating-point"),
    (lambda: focal_loss(torch.randn(2, 3), torch.ones(2, 3), pos_weight=torch.ones(2)), ValueError, "pos_weight broadcastable"),
    (lambda: focal_loss(torch.randn(2, 3), torch.ones(2, 3), weight=torch.ones(4, 2, 3)), ValueError, "weight broadcastable"),
    (lambda: softmax_focal_loss(torch.randn(3, 2), torch.tensor([0, 2, 1])), ValueError, r"in \[0, 1\].*got 2"),
    (lambda: softmax_focal_loss(torch.randn(3, 2), torch.tensor([0, 1, 1]), alpha=[1.0]), ValueError, "per class"),
    (lambda: MSELoss("avg"), ValueError, "reduction"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------- it trains
@pytest.mark.parametrize("loss_fn,make_target", [
    (CrossEntropyLoss(), lambda n: torch.randint(0, 3, (n,))),
    (CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5])), lambda n: torch.softmax(torch.randn(n, 3), 1)),
    (SoftmaxFocalLoss(gamma=2.0), lambda n: torch.randint(0, 3, (n,))),
    (FocalLoss(reduction="mean"), lambda n: (torch.rand(n, 3) > 0.5).float()),
    (MSELoss(), lambda n: torch.randn(n, 3)),
])
def test_one_sgd_step_lowers_loss(loss_fn, make_target):
    model = Linear(4, 3)
    x, y = torch.randn(32, 4), make_target(32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = loss_fn(model(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(model(x), y)
    assert after.item() < before.item()
