"""Tests for layers.attention: the memory-lean attention Function and MultiHeadAttention."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layers.attention import (
    MultiHeadAttention, ScaledDotProductAttentionFunction, attention_weights, scaled_dot_product_attention,
)
from layers.attention.sdpa import _scaled_dot_product_attention_apply
from layers.composable import autocast_apply
from layers.linear import Linear
from layers.measuring import OpCounter
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
    check_layer(lambda a, b, c, m: scaled_dot_product_attention(a, b, c, m, is_causal=causal),
                lambda a, b, c, m: torch_sdpa(a, b, c, m, causal), (q, k, v, mask),
                gradcheck=full, gradgradcheck=full and L == 3 and mask_kind == "float",  # slow: one case
                compile=full and L == 3)                       # compile (seconds a call): once per mask kind


@pytest.mark.parametrize("mask_shape", [(3, 4), (2, 1, 1, 4)])
def test_sdpa_learned_float_mask_gets_its_gradient(mask_shape):
    q, k, v = qkv(batch=(2,), L=3, S=4, E=2, Ev=2)
    bias = torch.randn(*mask_shape[-3:], dtype=torch.float64, requires_grad=True)   # broadcast over batch
    check_layer(scaled_dot_product_attention, torch_sdpa, (q, k, v, bias), gradgradcheck=len(mask_shape) == 2,
                empty_batch=False)


def test_sdpa_broadcasts_batch_and_gqa():
    q, (k, v) = qkv(batch=(2,), L=3)[0], qkv(batch=(2, 2))[1:]       # 3-D query, 4-D key/value
    check_layer(scaled_dot_product_attention, torch_sdpa, (q, k, v), gradgradcheck=False, empty_batch=False)
    q4 = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    gqa = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, enable_gqa=True)  # noqa: E731
    check_layer(lambda a, b, c: scaled_dot_product_attention(a, b, c, enable_gqa=True), gqa,
                (q4, *(torch.randn(1, 2, 5, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))),
                gradgradcheck=False, empty_batch=False)


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
        ScaledDotProductAttentionFunction.apply(q, k, v, None, False, 0.5, 128)
    assert (1, L, S) not in shapes
    assert sorted(shapes) == sorted([(1, L, 4), (1, S, 4), (1, S, 4), (1, L)])   # q, k, v, lse


def test_logsumexp_output_and_its_gradient():
    q, k, v = qkv()
    out, lse = ScaledDotProductAttentionFunction.apply(q, k, v, None, True, 0.7, 128)
    causal = torch.ones(3, 4, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-2, -1) * 0.7).masked_fill(~causal, float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))

    def ours(a, b, c):                         # as scaled_dot_product_attention applies the Function
        return autocast_apply(_scaled_dot_product_attention_apply, "lower", a, b, c, None, True, 0.7, 128)

    def reference(a, b, c):
        # the logsumexp is a float32 statistic for float16/bfloat16 (and under autocast), as the
        # logsumexp torch's fused CPU kernel returns (_scaled_dot_product_flash_attention_for_cpu)
        s = (a @ b.transpose(-2, -1) * 0.7).masked_fill(~causal, float("-inf"))
        return (F.scaled_dot_product_attention(a, b, c, is_causal=True, scale=0.7),
                torch.logsumexp(s.to(torch.promote_types(a.dtype, torch.float32)), -1))

    check_layer(ours, reference, (q, k, v))


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
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 4)),
     ValueError, "broadcastable batch dimensions"),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4), dropout_p=0.1),
     ValueError, "dropout_p"),
    (lambda: scaled_dot_product_attention(torch.randn(1, 3, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4),
                                          enable_gqa=True), ValueError, "enable_gqa"),
    (lambda: MultiHeadAttention(8, 2, dropout=0.1), ValueError, "dropout"),
    (lambda: MultiHeadAttention(8, 2, add_bias_kv=True), ValueError, "add_bias_kv"),
    (lambda: MultiHeadAttention(8, 2, add_zero_attn=True), ValueError, "add_zero_attn"),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(3, 2, 8), torch.randn(4, 2, 8), torch.randn(4, 2, 8),
                                      torch.ones(2, 5, dtype=torch.bool)), ValueError, "key_padding_mask of shape"),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(2, 3, 2, 8), torch.randn(2, 4, 2, 8), torch.randn(2, 4, 2, 8)),
     ValueError, "2 \\(unbatched\\) or 3 dimensions"),
    (lambda: MultiHeadAttention.from_torch(nn.Linear(2, 2)), TypeError, "MultiheadAttention"),
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
    (lambda: MultiHeadAttention(8, 2)(torch.randn(3, 2, 6), torch.randn(3, 2, 8), torch.randn(3, 2, 8)),
     ValueError, "query of size 8 in dimension -1, got 6"),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(3, 2, 8), torch.randn(4, 2, 8), torch.randn(5, 2, 8)),
     ValueError, "same batch size and key, value with the same length S"),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(3, 2, 8), torch.randn(4, 2, 8), torch.randn(4, 2, 8),
                                      attn_mask=torch.ones(3, 3, dtype=torch.bool)),
     ValueError, r"attn_mask of shape \(3, 4\) or \(4, 3, 4\)"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------- MultiHeadAttention
def mha_inputs(N=2, L=3, S=4, E=4, kdim=None, vdim=None, dtype=torch.float64, batch_first=False, unbatched=False):
    def make(length, features):
        shape = (length, features) if unbatched else (N, length, features) if batch_first else (length, N, features)
        return torch.randn(*shape, dtype=dtype).requires_grad_(True)
    return make(L, E), make(S, kdim or E), make(S, vdim or E)


def torch_pair(dtype=torch.float64, **kwargs):
    """Ours and nn.MultiheadAttention with the same arguments and weights (non-zero biases)."""
    ref = nn.MultiheadAttention(4, 2, **kwargs).to(dtype)
    if ref.in_proj_bias is not None:
        with torch.no_grad():
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    return MultiHeadAttention.from_torch(ref), ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [
    dict(), dict(bias=False), dict(kdim=3, vdim=5), dict(batch_first=True),
])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "padding", "bool+padding", "unbatched"])
def test_mha_matches_torch(dtype, config, mask_kind):
    ours, ref = torch_pair(dtype, **config)
    unbatched = mask_kind == "unbatched"
    q, k, v = mha_inputs(kdim=config.get("kdim"), vdim=config.get("vdim"), dtype=dtype,
                         batch_first=config.get("batch_first", False), unbatched=unbatched)
    attn_mask = padding = None
    if "bool" in mask_kind:                              # torch's meaning: True = not allowed
        attn_mask = torch.rand(2 * 2, 3, 4) > 0.6
        attn_mask[..., 0] = False                        # torch returns NaN for a fully masked row
    elif mask_kind == "float":
        attn_mask = torch.randn(3, 4, dtype=dtype)
    elif unbatched:
        attn_mask = torch.rand(2, 3, 4) > 0.6            # (num_heads, L, S)
        attn_mask[..., 0] = False
    if "padding" in mask_kind:
        padding = torch.tensor([[False, True, False, True], [False, False, False, True]])
    full = dtype == torch.float64 and mask_kind == "bool+padding" and config == {}
    # compile (seconds a call): every mask kind with the default config, every config with no mask (float64)
    compile = dtype == torch.float64 and (config == {} or mask_kind == "none")
    check_layer(ours, ref, (q, k, v, padding, True, attn_mask), gradcheck=full, gradgradcheck=False,
                empty_batch=False, batch_inputs=[] if unbatched else None, compile=compile)


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_weights_and_causal(average, need_weights):
    ours, ref = torch_pair(batch_first=True)
    q, k, v = mha_inputs(batch_first=True, S=3)
    causal = nn.Transformer.generate_square_subsequent_mask(3, dtype=torch.float64)
    out, w = ours(q, k, v, need_weights=need_weights, average_attn_weights=average, is_causal=True)
    ref_out, ref_w = ref(q, k, v, need_weights=need_weights, attn_mask=causal, average_attn_weights=average,
                         is_causal=True)
    torch.testing.assert_close(out, ref_out)
    assert (w is None) == (ref_w is None) == (not need_weights)
    if need_weights:
        torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(ours(q, k, v, attn_mask=causal, is_causal=True)[0], ref_out)


def test_mha_learned_float_mask_gets_gradient():
    ours, ref = torch_pair()
    q, k, v = mha_inputs()
    bias = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    check_layer(lambda a, b, c, m: ours(a, b, c, attn_mask=m)[0], lambda a, b, c, m: ref(a, b, c, attn_mask=m)[0],
                (q, k, v, bias), gradcheck=False, gradgradcheck=False, empty_batch=False, batch_inputs=[])


def test_mha_state_dict_both_ways():
    for kwargs in (dict(), dict(kdim=3, vdim=5), dict(bias=False)):
        ref = nn.MultiheadAttention(4, 2, **kwargs)
        ours = MultiHeadAttention(4, 2, **kwargs)
        assert list(ours.state_dict()) == list(ref.state_dict())
        ours.load_state_dict(ref.state_dict())
        for name, t in ref.state_dict().items():
            assert torch.equal(ours.state_dict()[name], t)
        back = ours.to_torch()
        assert all(torch.equal(back.state_dict()[n], t) for n, t in ours.state_dict().items())
    default = MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2))
    assert default.batch_first is False and default.in_proj_weight.shape == (24, 8)


@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_empty_batch(need_weights):
    q, k, v = mha_inputs(N=0, batch_first=True)
    ours, ref = torch_pair(batch_first=True)
    check_layer(ours, None, (q, k, v, None, need_weights), gradcheck=False, gradgradcheck=False,
                noncontiguous=False, needs_input_grad=False)
    out, w = ours(q, k, v, need_weights=need_weights)
    assert out.shape == (0, 3, 4) and (w is None or w.shape == (0, 3, 4))


def test_mha_structure_and_init():
    mha = MultiHeadAttention(8, 2, kdim=3, vdim=5)
    assert isinstance(mha.out_proj, Linear) and mha.in_proj_weight is None
    assert mha.k_proj_weight.shape == (8, 3) and mha.v_proj_weight.shape == (8, 5)
    assert torch.equal(mha.in_proj_bias, torch.zeros(24)) and torch.equal(mha.out_proj.bias, torch.zeros(8))
    assert mha.extra_repr() == "embed_dim=8, num_heads=2, bias=True, batch_first=False, kdim=3, vdim=5"
    assert MultiHeadAttention(8, 2, bias=False).in_proj_bias is None
    meta = MultiHeadAttention(8, 2, device="meta", dtype=torch.float64)
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in meta.parameters())


def test_mha_one_sgd_step_lowers_loss():
    mha = MultiHeadAttention(8, 2, batch_first=True)
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
        return scaled_dot_product_attention(a, b, c, mask, is_causal=causal, block_size=block_size)

    def ref(a, b, c):
        return unblocked_reference(a, b, c, mask, causal)

    # compile (seconds a call): at a block size that leaves a short last block, for no mask, causal,
    # a float mask and two bool masks (the bool shapes only broadcast differently)
    compile = block_size == 3 and mask_kind in ("none", "causal", "bool (S,)", "bool (B, 1, L, S)", "float (B, H, L, S)")
    check_layer(ours, ref, (q, k, v), gradcheck=False, gradgradcheck=False, empty_batch=False, compile=compile)
    # a single block (the whole matrix at once) gives the same numbers
    torch.testing.assert_close(ours(q, k, v), scaled_dot_product_attention(q, k, v, mask, is_causal=causal, block_size=L))


def test_blocked_double_backward_across_blocks():
    q, k, v = qkv(batch=(1,), L=5, S=4, E=2, Ev=2)
    mask = random_bool_mask(5, 4)                      # row 1 fully masked
    fn = lambda a, b, c: scaled_dot_product_attention(a, b, c, mask, block_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


def test_no_full_score_matrix_is_ever_allocated():
    L = S = 96
    q, k, v = (torch.randn(1, 2, n, 4, requires_grad=True) for n in (L, S, S))
    with OpCounter() as ops:
        scaled_dot_product_attention(q, k, v, is_causal=True, block_size=32).sum().backward()
    assert ops.largest == 1 * 2 * 32 * S              # one (B, H, block, S) block, never (B, H, L, S)


@pytest.mark.parametrize("block_size", [0, -1, 2.0, True])
def test_bad_block_size(block_size):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="block_size to be a positive integer"):
        scaled_dot_product_attention(q, k, v, block_size=block_size)


# ------------------------------------------------------------- composability
def test_sdpa_vmap_jvp_jacrev():
    q, k, v = (t.detach() for t in qkv(batch=(2,), L=3, S=4))
    mask = torch.randn(3, 4, dtype=torch.float64)
    ours = lambda a, b, c, m: scaled_dot_product_attention(a, b, c, m)       # noqa: E731
    ref = lambda a, b, c, m: F.scaled_dot_product_attention(a, b, c, m)      # noqa: E731
    torch.testing.assert_close(torch.func.vmap(ours, (0, 0, 0, None))(q, k, v, mask), ref(q, k, v, mask))
    tangents = tuple(torch.randn_like(t) for t in (q, k, v, mask))
    torch.testing.assert_close(torch.func.jvp(ours, (q, k, v, mask), tangents),
                               torch.func.jvp(ref, (q, k, v, mask), tangents))
    causal = lambda a: scaled_dot_product_attention(a, k, v, is_causal=True)  # noqa: E731
    torch.testing.assert_close(torch.func.jacrev(causal)(q), torch.func.jacfwd(
        lambda a: F.scaled_dot_product_attention(a, k, v, is_causal=True))(q))


def test_sdpa_autocast_dtype_and_low_precision_accuracy():
    q, k, v = (torch.randn(2, 2, 64, 16) * 2 for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scaled_dot_product_attention(q, k, v).dtype == F.scaled_dot_product_attention(q, k, v).dtype
    truth = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    for dtype in (torch.bfloat16, torch.float16):
        low = [t.to(dtype) for t in (q, k, v)]
        ours = (scaled_dot_product_attention(*low, is_causal=True).double() - truth).abs().max()
        torchs = (F.scaled_dot_product_attention(*low, is_causal=True).double() - truth).abs().max()
        assert ours <= 1.5 * torchs, (dtype, ours, torchs)


def test_mha_autocast_dtype():
    ours, ref = torch_pair(torch.float32)
    x = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (out, w), (ref_out, ref_w) = ours(x, x, x), ref(x, x, x)
    assert (out.dtype, w.dtype) == (ref_out.dtype, ref_w.dtype)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = MultiHeadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False, is_causal=True)[0].sum(-1)


@pytest.mark.parametrize("train", [True, False])
def test_compile_export_and_trace_match_eager(train):
    """fullgraph: a graph break fails; aot_eager also traces the backward."""
    torch._dynamo.reset()
    model = _Block().train(train)
    x = torch.randn(2, 5, 8, requires_grad=True)
    eager = model(x)
    g_eager = torch.autograd.grad(eager.sum(), [x, *model.parameters()])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(torch.autograd.grad(compiled.sum(), [x, *model.parameters()]), g_eager):
        torch.testing.assert_close(a, b)
    exported = torch.export.export(model, (x.detach(),)).module()
    torch.testing.assert_close(exported(x.detach()), eager.detach())
    traced = torch.jit.trace(model, (x.detach(),), check_trace=False)
    torch.testing.assert_close(traced(x.detach()), eager.detach())
