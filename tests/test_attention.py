"""Tests for layers.attention: the memory-lean attention Function and MultiHeadAttention."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layers.attention import (
    MultiHeadAttention, ScaledDotProductAttentionFunction, attention_weights, scaled_dot_product_attention,
)
from layers.linear import Linear
from layers.testing import check_layer

DTYPES = [torch.float64, torch.float32]


def qkv(batch=(2, 2), L=3, S=4, E=3, Ev=2, dtype=torch.float64):
    make = lambda *s: torch.randn(*batch, *s, dtype=dtype).requires_grad_(True)  # noqa: E731
    return make(L, E), make(S, E), make(S, Ev)


def torch_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """PyTorch's op with our argument order (its fifth positional argument is dropout_p)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


def random_bool_mask(*shape, fully_masked_row=True):
    mask = torch.rand(*shape) > 0.3
    if fully_masked_row:
        mask[..., 1, :] = False                      # query 1 sees no key at all
    return mask


# ------------------------------------------------------ scaled_dot_product_attention
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
@pytest.mark.parametrize("sizes", [dict(L=3, S=4, E=3, Ev=2), dict(L=5, S=2, E=1, Ev=3), dict(L=1, S=1, E=2, Ev=1)])
def test_sdpa_check_layer(dtype, mask_kind, sizes):
    q, k, v = qkv(dtype=dtype, **sizes)
    L, S = sizes["L"], sizes["S"]
    mask, causal = None, False
    if mask_kind == "bool":
        mask = random_bool_mask(2, 1, L, S, fully_masked_row=L > 1)
    elif mask_kind == "float":
        mask = torch.randn(2, 2, L, S, dtype=dtype)
        mask[0, :, 0, :] = float("-inf")             # a fully masked row through -inf
    elif mask_kind == "causal":
        causal = True
    full = dtype == torch.float64
    check_layer(scaled_dot_product_attention, torch_sdpa, (q, k, v, mask, causal),
                gradcheck=full, gradgradcheck=full and L == 3)     # gradgradcheck is slow: one size


@pytest.mark.parametrize("mask_shape", [(1, 4), (3, 4), (1, 3, 4), (2, 1, 1, 4)])
def test_sdpa_mask_broadcasting(mask_shape):
    q, k, v = qkv()
    mask = torch.rand(*mask_shape) > 0.4
    check_layer(scaled_dot_product_attention, torch_sdpa, (q, k, v, mask),
                gradgradcheck=False, empty_batch=len(mask_shape) == 4)


def test_sdpa_scale_and_unbatched():
    q, k, v = qkv(batch=())
    check_layer(lambda a, b, c: scaled_dot_product_attention(a, b, c, scale=0.3),
                lambda a, b, c: F.scaled_dot_product_attention(a, b, c, scale=0.3), (q, k, v),
                gradgradcheck=False, empty_batch=False)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_sdpa_fully_masked_rows_are_zero_without_nan(mask_kind):
    q, k, v = qkv(L=3, S=4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False
    if mask_kind == "float":
        mask = torch.zeros(3, 4, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    out = scaled_dot_product_attention(q, k, v, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[..., 2, :], torch.zeros_like(q.grad[..., 2, :]))
    weights = attention_weights(q, k, mask)
    assert torch.equal(weights[..., 2, :], torch.zeros_like(weights[..., 2, :]))


def test_backward_saves_no_probability_matrix():
    L = S = 64
    q, k, v = qkv(batch=(1,), L=L, S=S, E=4, Ev=4)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ScaledDotProductAttentionFunction.apply(q, k, v, None, False, 0.5)
    assert (1, L, S) not in shapes
    assert sorted(shapes) == sorted([(1, L, 4), (1, S, 4), (1, S, 4), (1, L, 4), (1, L)])


def test_logsumexp_output_and_its_gradient():
    q, k, v = qkv()
    out, lse = ScaledDotProductAttentionFunction.apply(q, k, v, None, True, 0.7)
    scores = (q @ k.transpose(-2, -1) * 0.7).masked_fill(~torch.ones(3, 4, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))
    check_layer(lambda a, b, c: ScaledDotProductAttentionFunction.apply(a, b, c, None, True, 0.7),
                lambda a, b, c: (F.scaled_dot_product_attention(a, b, c, is_causal=True, scale=0.7),
                                 torch.logsumexp((a @ b.transpose(-2, -1) * 0.7).masked_fill(
                                     ~torch.ones(3, 4, dtype=torch.bool).tril(), float("-inf")), -1)),
                (q, k, v))


@pytest.mark.parametrize("scale", [None, 0.5, 2.0])
def test_attention_weights_match_softmax(scale):
    q, k, _ = qkv()
    mask = torch.rand(3, 4) > 0.2
    s = q.shape[-1] ** -0.5 if scale is None else scale
    ref = torch.softmax((q @ k.transpose(-2, -1) * s).masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    torch.testing.assert_close(attention_weights(q, k, mask, scale=scale), ref)


@pytest.mark.parametrize("call,error,match", [
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 3), torch.randn(2, 5, 4)),
     ValueError, "same head dimension E, got 4 and 3"),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 6, 4)),
     ValueError, "same sequence length S, got 5 and 6"),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4)),
     ValueError, "same batch dimensions"),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4),
                                          torch.ones(3, 4, dtype=torch.bool)),
     ValueError, r"broadcastable to the scores' shape \(2, 3, 5\), got \(3, 4\)"),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4),
                                          torch.ones(3, 5, dtype=torch.bool), is_causal=True),
     ValueError, "either attn_mask or is_causal"),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4),
                                          torch.ones(3, 5, dtype=torch.long)),
     TypeError, "boolean or floating point"),
    (lambda: scaled_dot_product_attention(torch.ones(3, 4, dtype=torch.long), torch.randn(5, 4), torch.randn(5, 4)),
     TypeError, "query to be a floating-point tensor"),
    (lambda: MultiHeadAttention(10, 3), ValueError, "embed_dim divisible by num_heads, got embed_dim=10, num_heads=3"),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(2, 3, 6), torch.randn(2, 3, 8), torch.randn(2, 3, 8)),
     ValueError, "query of size 8 in dimension -1, got 6"),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 5, 8)),
     ValueError, "same B and S"),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8),
                                      torch.ones(3, 3, dtype=torch.bool)),
     ValueError, r"broadcastable to the scores' shape \(2, 2, 3, 4\)"),
    (lambda: MultiHeadAttention(8, 2).load_from_torch(nn.MultiheadAttention(8, 2)), ValueError, "batch_first=True"),
    (lambda: MultiHeadAttention(8, 2).load_from_torch(nn.MultiheadAttention(8, 4, batch_first=True)),
     ValueError, "num_heads"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------- MultiHeadAttention
class FunctionalTorchMHA(nn.Module):
    """The reference: PyTorch's F.multi_head_attention_forward with our parameter names."""

    def __init__(self, embed_dim, num_heads, bias=True, kdim=None, vdim=None):
        super().__init__()
        self.num_heads, self.embed_dim = num_heads, embed_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, query, key, value, attn_mask=None, is_causal=False, need_weights=False,
                average_attn_weights=True):
        B, L, _ = query.shape
        S = key.shape[1]
        allowed = torch.ones(B, self.num_heads, L, S, dtype=torch.bool)
        bias = torch.zeros(B, self.num_heads, L, S, dtype=query.dtype)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        elif attn_mask is not None:
            bias = bias + attn_mask
        if is_causal:
            allowed = allowed & torch.ones(L, S, dtype=torch.bool).tril()
        torch_mask = bias.masked_fill(~allowed, float("-inf")).reshape(B * self.num_heads, L, S)
        in_bias = None if self.q_proj.bias is None else torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        out, weights = F.multi_head_attention_forward(
            query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), self.embed_dim, self.num_heads,
            None, in_bias, None, None, False, 0.0, self.out_proj.weight, self.out_proj.bias, training=False,
            need_weights=need_weights, attn_mask=torch_mask, use_separate_proj_weight=True,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            average_attn_weights=average_attn_weights)
        return out.transpose(0, 1), weights


def mha_inputs(B=2, L=3, S=4, E=4, kdim=None, vdim=None, dtype=torch.float64):
    make = lambda *s: torch.randn(*s, dtype=dtype).requires_grad_(True)  # noqa: E731
    return make(B, L, E), make(B, S, kdim or E), make(B, S, vdim or E)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [
    dict(bias=True), dict(bias=False), dict(bias=True, kdim=3, vdim=5),
])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal", "bool+causal"])
def test_mha_check_layer(dtype, config, mask_kind):
    E, H = 4, 2
    ours = MultiHeadAttention(E, H, **config).to(dtype)
    ref = FunctionalTorchMHA(E, H, **config).to(dtype)
    q, k, v = mha_inputs(kdim=config.get("kdim"), vdim=config.get("vdim"), dtype=dtype)
    mask = None
    if "bool" in mask_kind:
        mask = random_bool_mask(2, 1, 3, 4, fully_masked_row=False)
        mask[..., 0] = True                             # torch's MHA returns NaN for fully masked rows
    elif mask_kind == "float":
        mask = torch.randn(2, 2, 3, 4, dtype=dtype)
    full = dtype == torch.float64 and mask_kind in ("none", "bool+causal")
    # empty_batch=False: PyTorch's F.multi_head_attention_forward cannot reshape a batch of 0
    # (test_mha_empty_batch runs ours alone)
    check_layer(ours, ref, (q, k, v, mask, "causal" in mask_kind), gradcheck=full, empty_batch=False,
                gradgradcheck=full and config == dict(bias=True) and mask_kind == "bool+causal")


@pytest.mark.parametrize("average", [True, False])
def test_mha_need_weights(average):
    ours, ref = MultiHeadAttention(4, 2), FunctionalTorchMHA(4, 2)
    q, k, v = mha_inputs(dtype=torch.float32)
    q, k, v = (t.float() for t in (q, k, v))
    check_layer(ours, ref, (q, k, v, None, True, True, average), gradcheck=False, gradgradcheck=False)


@pytest.mark.parametrize("kdim,vdim", [(None, None), (3, 5)])
def test_mha_loads_torch_multiheadattention(kdim, vdim):
    torch_mha = nn.MultiheadAttention(4, 2, kdim=kdim, vdim=vdim, batch_first=True).double()
    with torch.no_grad():                                # non-zero biases, so a mix-up would show
        torch_mha.in_proj_bias.normal_()
        torch_mha.out_proj.bias.normal_()
    ours = MultiHeadAttention.from_torch(torch_mha)
    q, k, v = mha_inputs(kdim=kdim, vdim=vdim)
    mask = torch.rand(3, 4) > 0.3
    mask[:, 0] = True
    out, w = ours(q, k, v, mask, need_weights=True)
    ref_q, ref_k, ref_v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ref_out, ref_w = torch_mha(ref_q, ref_k, ref_v, attn_mask=~mask)  # torch: True = NOT allowed
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v, *ours.parameters()], g)
    ref_grads = torch.autograd.grad(ref_out, [ref_q, ref_k, ref_v, *torch_mha.parameters()], g)
    for a, b in zip(grads[:3], ref_grads[:3]):
        torch.testing.assert_close(a, b)
    named = dict(zip([n for n, _ in ours.named_parameters()], grads[3:]))
    ref_named = dict(zip([n for n, _ in torch_mha.named_parameters()], ref_grads[3:]))
    if kdim is None:
        ref_w_q, ref_w_k, ref_w_v = ref_named["in_proj_weight"].chunk(3)
    else:
        ref_w_q, ref_w_k, ref_w_v = (ref_named[f"{n}_proj_weight"] for n in "qkv")
    for ours_name, ref_grad in [("q_proj.weight", ref_w_q), ("k_proj.weight", ref_w_k), ("v_proj.weight", ref_w_v),
                                ("out_proj.weight", ref_named["out_proj.weight"]),
                                ("out_proj.bias", ref_named["out_proj.bias"])]:
        torch.testing.assert_close(named[ours_name], ref_grad)
    torch.testing.assert_close(torch.cat([named[f"{n}_proj.bias"] for n in "qkv"]), ref_named["in_proj_bias"])
    back = ours.to_torch()
    torch.testing.assert_close(back(q, k, v, attn_mask=~mask)[0], out)


@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_empty_batch(need_weights):
    q, k, v = mha_inputs(B=0)
    check_layer(MultiHeadAttention(4, 2).double(), None, (q, k, v, None, True, need_weights),
                gradcheck=False, gradgradcheck=False, noncontiguous=False, needs_input_grad=False)
    out, w = MultiHeadAttention(4, 2).double()(q, k, v, None, True, need_weights)
    assert out.shape == (0, 3, 4) and (w is None or w.shape == (0, 3, 4))


def test_mha_structure_and_init():
    mha = MultiHeadAttention(8, 2, kdim=3, vdim=5)
    assert all(isinstance(p, Linear) for p in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj))
    assert mha.k_proj.weight.shape == (8, 3) and mha.v_proj.weight.shape == (8, 5)
    assert torch.equal(mha.q_proj.bias, torch.zeros(8)) and torch.equal(mha.out_proj.bias, torch.zeros(8))
    assert mha.extra_repr() == "embed_dim=8, num_heads=2, bias=True, kdim=3, vdim=5"
    assert MultiHeadAttention(8, 2, bias=False).q_proj.bias is None


def test_mha_one_sgd_step_lowers_loss():
    mha = MultiHeadAttention(8, 2)
    x, target = torch.randn(4, 5, 8), torch.randn(4, 5, 8)
    opt = torch.optim.SGD(mha.parameters(), lr=0.1)
    before = F.mse_loss(mha(x, x, x, is_causal=True)[0], target)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = F.mse_loss(mha(x, x, x, is_causal=True)[0], target)
    assert after.item() < before.item()


# ------------------------------------------------------------------ query blocks
def unblocked_reference(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """The whole-matrix formula softmax(s Q K^T + B) V from plain torch ops (fully masked rows -> 0)."""
    return attention_weights(q, k, attn_mask, is_causal, scale) @ v


@pytest.mark.parametrize("block_size", [1, 3, 4])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool (L, S)", "bool (1, L, S)", "bool (B, 1, L, S)",
                                       "bool (B, 1, 1, S)", "bool (S,)", "float (B, H, L, S)"])
def test_blocked_equals_unblocked_formula(block_size, mask_kind):
    L, S = 10, 7                                       # 10 is not a multiple of 3 or 4: a short last block
    q, k, v = qkv(L=L, S=S, E=3, Ev=2)
    shapes = {"bool (L, S)": (L, S), "bool (1, L, S)": (1, L, S), "bool (B, 1, L, S)": (2, 1, L, S),
              "bool (B, 1, 1, S)": (2, 1, 1, S), "bool (S,)": (S,)}
    mask, causal = None, mask_kind == "causal"
    if mask_kind in shapes:
        mask = random_bool_mask(*shapes[mask_kind], fully_masked_row=len(shapes[mask_kind]) >= 2
                                and shapes[mask_kind][-2] == L)
        if mask_kind == "bool (B, 1, 1, S)" or mask_kind == "bool (S,)":
            mask[..., 0] = True
    elif mask_kind.startswith("float"):
        mask = torch.randn(2, 2, L, S, dtype=torch.float64)
        mask[1, 0, 9, :] = float("-inf")              # fully masked row in the short last block

    def ours(a, b, c):
        return scaled_dot_product_attention(a, b, c, mask, causal, block_size=block_size)

    def ref(a, b, c):
        return unblocked_reference(a, b, c, mask, causal)

    check_layer(ours, ref, (q, k, v), gradcheck=False, gradgradcheck=False, empty_batch=False)
    # a single block (the whole matrix at once) gives the same numbers
    torch.testing.assert_close(ours(q, k, v), scaled_dot_product_attention(q, k, v, mask, causal, block_size=L))


def test_blocked_double_backward_across_blocks():
    q, k, v = qkv(batch=(1,), L=5, S=4, E=2, Ev=2)
    mask = random_bool_mask(5, 4)                      # row 1 fully masked
    fn = lambda a, b, c: scaled_dot_product_attention(a, b, c, mask, block_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


def test_no_full_score_matrix_is_ever_allocated():
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    L = S = 96
    q, k, v = (torch.randn(1, 2, n, 4, requires_grad=True) for n in (L, S, S))
    with Shapes() as shapes:
        scaled_dot_product_attention(q, k, v, is_causal=True, block_size=32).sum().backward()
    assert shapes.largest == 1 * 2 * 32 * S           # one (B, H, block, S) block, never (B, H, L, S)


@pytest.mark.parametrize("block_size", [0, -1, 2.0, True])
def test_bad_block_size(block_size):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="block_size to be a positive integer"):
        scaled_dot_product_attention(q, k, v, block_size=block_size)
