"""Attention with a memory-lean, hand-written backward, and multi-head attention built on it.

Taught in the chapter "Attention" (``book/attention.ipynb``).

:class:`ScaledDotProductAttentionFunction` computes
:math:`\\operatorname{softmax}(s\\,QK^\\top + B)\\,V` and saves only ``q, k, v``, the
mask and the per-row logsumexp for backward, never the
:math:`L \\times S` probability matrix: backward recomputes the probabilities
from the logsumexp, as memory-efficient and flash attention do. Forward and
backward walk over the queries in blocks of rows, so no :math:`L \\times S`
temporary is built either: the largest one is a block of ``block_size`` rows by
:math:`S` keys. :func:`scaled_dot_product_attention` is its functional form,
with the arguments and semantics of
:func:`torch.nn.functional.scaled_dot_product_attention` (no dropout);
:func:`attention_weights` returns the probability matrix itself, for plots.
:class:`MultiHeadAttention` is a drop-in :class:`torch.nn.MultiheadAttention`
(same arguments, mask meanings and parameter names) built on them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .composable import autocast_apply, autocast_dtype, compilable_apply
from ._validation import check_same_device, check_same_dtype, check_tensor
from .linear import Linear, linear

__all__ = [
    "ScaledDotProductAttentionFunction",
    "scaled_dot_product_attention",
    "attention_weights",
    "MultiHeadAttention",
]


#: Default number of query rows :class:`ScaledDotProductAttentionFunction` processes at a time.
DEFAULT_BLOCK_SIZE = 128


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype attention computes in: float32 for float16/bfloat16 inputs, else the input's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _scores(q: Tensor, k: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float,
            row0: int = 0) -> Tensor:
    """Masked attention scores :math:`S = s\\,QK^\\top + B`, shape ``(..., Lb, S)``.

    Positions that may not be attended to are ``-inf``: ``False`` entries of a
    boolean mask and, when ``is_causal``, the keys after the query. ``q`` may be
    a block of query rows that starts at row ``row0`` of the full query (the
    causal mask is offset by it; ``attn_mask`` must already be sliced to the
    block, see :func:`_mask_rows`).
    """
    scores = scale * (q @ k.transpose(-2, -1))                # (..., Lb, E) @ (..., E, S) -> (..., Lb, S)
    if is_causal:
        Lb, S = scores.shape[-2:]
        rows = torch.arange(row0, row0 + Lb, device=q.device).unsqueeze(1)   # (Lb, 1): absolute query index
        future = rows < torch.arange(S, device=q.device)                     # (Lb, S): j > i, upper-left aligned
        scores = scores.masked_fill(future, float("-inf"))
    if attn_mask is not None and attn_mask.dtype == torch.bool:              # True = takes part
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:                                              # additive float mask
        scores = scores + attn_mask
    return scores


def _rows_broadcast(attn_mask: Tensor) -> bool:
    """Whether a mask broadcast to ``(..., L, S)`` has one row for all queries (``(S,)`` or size 1 in dim -2)."""
    return attn_mask.dim() < 2 or attn_mask.shape[-2] == 1


def _mask_rows(attn_mask: Tensor | None, start: int, stop: int) -> Tensor | None:
    """The rows ``start:stop`` of a mask broadcastable to ``(..., L, S)``.

    A mask with one row for all queries applies to every block as it is;
    otherwise dimension -2 is sliced, keeping the leading dimensions so it
    still broadcasts against the block's ``(..., stop - start, S)`` scores.
    """
    if attn_mask is None or _rows_broadcast(attn_mask):
        return attn_mask
    return attn_mask[..., start:stop, :]                                     # (..., stop - start, S)


def _blocks(L: int, block_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each block of query rows; one empty block when ``L = 0``."""
    return [(start, min(start + block_size, L)) for start in range(0, max(L, 1), block_size)]


class ScaledDotProductAttentionFunction(torch.autograd.Function):
    r"""Attention :math:`O = PV`, :math:`P = \operatorname{softmax}(S)`, :math:`S = s\,QK^\top + B`.

    ``apply(q, k, v, attn_mask, is_causal, scale, block_size)`` returns
    ``(out, lse)`` where ``lse`` is the row logsumexp
    :math:`\ell_i = \log \sum_j e^{S_{ij}}`, shape ``(..., L)``. ``q, k, v``
    share their batch dimensions; ``attn_mask`` (``None``, boolean with ``True``
    = takes part, or an additive float :math:`B`) broadcasts to ``(..., L, S)``.
    Only ``q, k, v``, the mask and ``lse`` are saved for backward (``jvp`` also
    reads ``out``); backward recomputes :math:`P = e^{S - \ell}` and, for
    upstream gradients :math:`dO` and :math:`d\ell`, computes

    .. math::

        dV = P^\top dO, \qquad dP = dO\,V^\top, \qquad
        D = \operatorname{rowsum}(P \odot dP) = \operatorname{rowsum}(dO \odot O),

        dS = P \odot (dP - D\,\mathbf{1}^\top + d\ell\,\mathbf{1}^\top), \qquad
        dB = dS, \qquad dQ = s\,dS\,K, \qquad dK = s\,dS^\top Q .

    :math:`dB` is summed over the dimensions the float mask was broadcast
    along, so a learned attention bias trains. The :math:`d\ell` term is the
    gradient of the logsumexp output (:math:`\partial \ell_i / \partial S_{ij} = P_{ij}`);
    it is there because ``lse`` is an output that is saved: a loss on it, or a
    double backward, sends its gradient back through this Function. The
    backward is written in differentiable torch ops, so it is itself
    differentiable.

    Forward-mode AD (``jvp``), for tangents :math:`\dot Q, \dot K, \dot V, \dot B`:

    .. math::

        \dot S = s(\dot Q K^\top + Q \dot K^\top) + \dot B, \qquad
        \dot\ell = \operatorname{rowsum}(P \odot \dot S), \qquad
        \dot O = (P \odot \dot S)\,V - \dot\ell\,O + P \dot V .

    Both passes (and ``jvp``) walk over the queries in blocks of
    ``block_size`` rows, so the largest temporary is a ``(..., block_size, S)``
    block of scores, never the whole :math:`L \times S` matrix: forward computes
    each block's scores, row logsumexp and output; backward, per block,
    recomputes :math:`P` from :math:`\ell`, computes :math:`dP` and the block's
    :math:`D`, gives that block's :math:`dQ` (and mask rows) and adds its share
    of :math:`dV` and :math:`dK`. Each query row is independent of the others, so the result does
    not depend on ``block_size`` (up to rounding).

    float16/bfloat16 inputs are computed in float32 (products, row maximum,
    logsumexp and sums), as fused attention kernels accumulate; ``out`` and the
    gradients come back in the input dtype, ``lse`` stays float32. That is why
    :math:`D` is the row sum of :math:`P \odot dP`, both float32 in the block, and
    not of :math:`dO \odot O` (the same number in exact arithmetic): ``out`` is
    rounded to the input dtype, and in float16 that rounding, amplified in
    :math:`dS`, made :math:`dK` and :math:`dQ` several times less accurate than
    torch's kernel, which also sums :math:`P \odot dP`. The recomputed rows of
    :math:`P` are divided by their sum (1 in exact arithmetic): with large scores
    :math:`\ell` is large, its rounding scales a whole row of :math:`e^{S - \ell}`
    by :math:`1 + \delta`, and :math:`dP - D` would turn that into an error of
    :math:`\delta D`; renormalized, the float32 gradients are as accurate as
    torch's (about half its error on scores of a few hundred).

    A fully masked row (every score ``-inf``) has ``out = 0``, ``lse = -inf``
    and zero gradients, as in :func:`torch.nn.functional.scaled_dot_product_attention`.

    ``generate_vmap_rule = True``: forward is a pure function of its inputs and
    the context is filled in ``setup_context``, so ``torch.func.vmap`` runs
    the same code over a batch.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool,
                scale: float, block_size: int) -> tuple[Tensor, Tensor]:
        dtype, ct = q.dtype, _compute_dtype(q.dtype)
        q, k, v = q.to(ct), k.to(ct), v.to(ct)                         # no-op unless float16/bfloat16
        mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.to(ct)
        outs, lses = [], []
        for start, stop in _blocks(q.shape[-2], block_size):
            s = _scores(q[..., start:stop, :], k, _mask_rows(mask, start, stop), is_causal, scale,
                        row0=start)                                    # (..., Lb, S)
            row_max = (s.amax(dim=-1, keepdim=True) if s.shape[-1] > 0     # (..., Lb, 1)
                       else s.new_zeros(*s.shape[:-1], 1))             # no keys (S = 0): a fully masked row
            row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)   # fully masked row: no -inf - -inf
            e = torch.exp(s - row_max)                                 # (..., Lb, S), in [0, 1]
            denom = e.sum(dim=-1, keepdim=True)                        # (..., Lb, 1), 0 if fully masked
            outs.append((e @ v) / torch.where(denom > 0, denom, torch.ones_like(denom)))  # (..., Lb, Ev)
            lses.append((row_max + torch.log(denom)).squeeze(-1))      # (..., Lb), -inf if fully masked
        out = torch.cat(outs, dim=-2).to(dtype)                        # (..., L, Ev)
        lse = torch.cat(lses, dim=-1)                                  # (..., L)
        return out, lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, attn_mask, is_causal, scale, block_size = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, attn_mask, lse)                # no (L, S) tensor is saved
        ctx.save_for_forward(q, k, v, attn_mask, out, lse)
        ctx.is_causal, ctx.scale, ctx.block_size = is_causal, scale, block_size

    @staticmethod
    def backward(ctx, dout: Tensor, dlse: Tensor):
        q, k, v, attn_mask, lse = ctx.saved_tensors
        need_q, need_k, need_v, need_mask = ctx.needs_input_grad[:4]
        dq = dk = dv = dmask = None
        dtypes = q.dtype, k.dtype, v.dtype
        ct, scale = _compute_dtype(q.dtype), ctx.scale
        q, k, v, dout, dlse = (t.to(ct) for t in (q, k, v, dout, dlse))
        mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.to(ct)
        need_s = need_q or need_k or need_mask
        safe_lse = lse.masked_fill(lse == float("-inf"), float("inf"))   # (..., L); fully masked -> P = 0
        dq_blocks, dmask_blocks = [], []
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)              # (..., S, E), (..., S, Ev): sums over blocks
        for start, stop in _blocks(q.shape[-2], ctx.block_size):
            q_blk, mask_blk = q[..., start:stop, :], _mask_rows(mask, start, stop)   # (..., Lb, E)
            s = _scores(q_blk, k, mask_blk, ctx.is_causal, scale, row0=start)        # (..., Lb, S), recomputed
            p = torch.exp(s - safe_lse[..., start:stop].unsqueeze(-1))              # (..., Lb, S): P = e^(S - lse)
            total = p.sum(dim=-1, keepdim=True)                                      # (..., Lb, 1): 1 up to rounding
            p = p / torch.where(total > 0, total, torch.ones_like(total))           # (..., Lb, S): rows sum to 1
                                                                                     # (fully masked: stay 0)
            do = dout[..., start:stop, :]                                            # (..., Lb, Ev)
            if need_v:
                dv = dv + p.transpose(-2, -1) @ do                   # (..., S, Lb) @ (..., Lb, Ev) -> (..., S, Ev)
            if need_s:
                dp = do @ v.transpose(-2, -1)                        # (..., Lb, Ev) @ (..., Ev, S) -> (..., Lb, S)
                d_row = (p * dp).sum(dim=-1, keepdim=True)           # (..., Lb, 1): D = rowsum(P * dP)
                ds = p * (dp - d_row + dlse[..., start:stop].unsqueeze(-1))  # (..., Lb, S)
            if need_mask:
                dmask_blocks.append(ds.sum_to_size(mask_blk.shape))  # (..., Lb, S) -> the mask's block shape
            if need_q:
                dq_blocks.append(scale * (ds @ k))                   # (..., Lb, S) @ (..., S, E) -> (..., Lb, E)
            if need_k:
                dk = dk + scale * (ds.transpose(-2, -1) @ q_blk)     # (..., S, Lb) @ (..., Lb, E) -> (..., S, E)
        if need_q:
            dq = torch.cat(dq_blocks, dim=-2).to(dtypes[0])          # (..., L, E)
        dk = dk.to(dtypes[1]) if need_k else None
        dv = dv.to(dtypes[2]) if need_v else None
        if need_mask:                                                # one row for all queries: sum the blocks
            dmask = (torch.stack(dmask_blocks).sum(0) if _rows_broadcast(attn_mask)
                     else torch.cat(dmask_blocks, dim=-2)).to(attn_mask.dtype)   # attn_mask's shape
        return dq, dk, dv, dmask, None, None, None

    @staticmethod
    def jvp(ctx, tq: Tensor | None, tk: Tensor | None, tv: Tensor | None, tmask: Tensor | None, *_):
        q, k, v, attn_mask, out, lse = ctx.saved_tensors
        dtype, ct, scale = out.dtype, _compute_dtype(q.dtype), ctx.scale
        q, k, v, out = (t.to(ct) for t in (q, k, v, out))
        tq, tk, tv = (torch.zeros_like(x) if t is None else t.to(ct) for t, x in ((tq, q), (tk, k), (tv, v)))
        mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.to(ct)
        safe_lse = lse.masked_fill(lse == float("-inf"), float("inf"))   # (..., L); fully masked -> P = 0
        touts, tlses = [], []
        for start, stop in _blocks(q.shape[-2], ctx.block_size):
            q_blk = q[..., start:stop, :]                                            # (..., Lb, E)
            s = _scores(q_blk, k, _mask_rows(mask, start, stop), ctx.is_causal, scale, row0=start)
            p = torch.exp(s - safe_lse[..., start:stop].unsqueeze(-1))              # (..., Lb, S)
            ts = scale * (tq[..., start:stop, :] @ k.transpose(-2, -1) + q_blk @ tk.transpose(-2, -1))
            if tmask is not None:
                ts = ts + _mask_rows(tmask.to(ct), start, stop)                      # (..., Lb, S): dS/dt
            pts = p * ts                                                             # (..., Lb, S)
            tlse = pts.sum(dim=-1, keepdim=True)                                     # (..., Lb, 1)
            touts.append(pts @ v - tlse * out[..., start:stop, :] + p @ tv)          # (..., Lb, Ev)
            tlses.append(tlse.squeeze(-1))                                           # (..., Lb)
        return torch.cat(touts, dim=-2).to(dtype), torch.cat(tlses, dim=-1)


_scaled_dot_product_attention_apply = compilable_apply(ScaledDotProductAttentionFunction)


def _broadcast(*shapes) -> tuple[int, ...] | None:
    """The broadcast of ``shapes`` (as :func:`torch.broadcast_shapes`), or ``None`` if they do not broadcast."""
    n = max(len(s) for s in shapes)
    result = []
    for sizes in zip(*[(1,) * (n - len(s)) + tuple(s) for s in shapes]):
        size = 1
        for d in sizes:
            if d != 1 and size != 1 and d != size:
                return None
            size = d if d != 1 else size
        result.append(size)
    return tuple(result)


def _check_attention_inputs(where: str, query: Tensor, key: Tensor, value: Tensor,
                            attn_mask: Tensor | None, enable_gqa: bool = False) -> tuple[int, ...]:
    """Validate the arguments of :func:`scaled_dot_product_attention`; returns the batch shape ``*``."""
    check_tensor(query, where, "query", min_ndim=2)
    check_tensor(key, where, "key", min_ndim=2)
    check_tensor(value, where, "value", min_ndim=2)
    if autocast_dtype(query.device.type, "lower") is None:             # autocast casts them to one dtype
        check_same_dtype(where, key, query, "key")
        check_same_dtype(where, value, query, "value")
    check_same_device(where, key, query, "key")
    check_same_device(where, value, query, "value")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{where}: expected query and key with the same head dimension E, "
                         f"got {query.shape[-1]} and {key.shape[-1]}")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"{where}: expected key and value with the same sequence length S, "
                         f"got {key.shape[-2]} and {value.shape[-2]}")
    if enable_gqa and (query.dim() < 3 or key.dim() < 3 or key.shape[-3] != value.shape[-3]
                       or query.shape[-3] % key.shape[-3] != 0):
        raise ValueError(f"{where}: enable_gqa expects query (..., Hq, L, E), key (..., H, S, E) and value "
                         f"(..., H, S, Ev) with H dividing Hq, got {tuple(query.shape)}, {tuple(key.shape)} "
                         f"and {tuple(value.shape)}")
    kv_batch = [t.shape[:-2] for t in (key, value)]
    if enable_gqa:                                                    # heads are matched by repetition
        kv_batch = [(*s[:-1], query.shape[-3]) for s in kv_batch]
    batch = _broadcast(query.shape[:-2], *kv_batch)
    if batch is None:
        raise ValueError(f"{where}: expected query, key and value with broadcastable batch dimensions, got "
                         f"{tuple(query.shape[:-2])}, {tuple(key.shape[:-2])} and {tuple(value.shape[:-2])}")
    if attn_mask is not None:
        check_tensor(attn_mask, where, "attn_mask", floating=False)
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"{where}: expected attn_mask to be boolean or floating point, got {attn_mask.dtype}")
        if attn_mask.dtype != torch.bool and autocast_dtype(query.device.type, "lower") is None:
            check_same_dtype(where, attn_mask, query, "attn_mask")
        check_same_device(where, attn_mask, query, "attn_mask")
        target = (*batch, query.shape[-2], key.shape[-2])             # (*, L, S)
        if _broadcast(attn_mask.shape, target) != target:
            raise ValueError(f"{where}: expected attn_mask broadcastable to the scores' shape {target}, "
                             f"got {tuple(attn_mask.shape)}")
    return batch


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    r"""Attention :math:`\operatorname{softmax}(s\,QK^\top + B)\,V` with a memory-lean backward.

    A drop-in for :func:`torch.nn.functional.scaled_dot_product_attention`
    (same arguments, defaults and mask meaning), computed by
    :class:`ScaledDotProductAttentionFunction`, whose backward recomputes the
    probabilities from the saved row logsumexp instead of keeping the
    :math:`L \times S` matrix, and whose forward and backward both process the
    queries ``block_size`` rows at a time, so no :math:`L \times S` temporary
    exists either. Under ``torch.autocast`` it runs in the autocast dtype, as
    PyTorch's op does (internally in float32, see the Function).

    Args:
        query: ``(*, L, E)``.
        key: ``(*, S, E)``.
        value: ``(*, S, Ev)``.
        attn_mask: ``None``, a boolean mask where ``True`` means "takes part in
            attention", or a float mask added to the scores (``-inf`` excludes);
            broadcastable to ``(*, L, S)``. A float mask that requires grad gets
            its gradient (a learned attention bias).
        dropout_p: must be ``0.0``; attention dropout is not supported (a
            ``ValueError`` otherwise).
        is_causal: if ``True``, query ``i`` attends only to keys ``j <= i``
            (upper-left aligned, as in PyTorch). As in PyTorch, it may not be
            combined with ``attn_mask`` (fold the causal mask into ``attn_mask`` instead).
        scale: the factor :math:`s`; :math:`1/\sqrt{E}` if ``None``.
        enable_gqa: grouped-query attention: ``key`` and ``value`` have
            :math:`H` heads in dimension -3 and ``query`` a multiple
            :math:`H_q`; each key/value head serves :math:`H_q / H` query heads.
        block_size: query rows per block (keyword only). The largest temporary is
            ``(*, block_size, S)``; the result does not depend on it. Default: 128.

    Returns:
        ``(*, L, Ev)``. A query row with no key to attend to (fully masked)
        returns zeros and passes zero gradients, never NaN.

    Shape:
        - query: :math:`(*_q, L, E)`, key: :math:`(*_k, S, E)`, value: :math:`(*_v, S, E_v)`,
          batch dimensions that broadcast to :math:`*` (e.g. a 3-D query with a 4-D key and value).
        - Output: :math:`(*, L, E_v)`.

    Examples:
        >>> q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 3)
        >>> scaled_dot_product_attention(q, k, v, is_causal=True).shape
        torch.Size([2, 4, 5, 3])
    """
    where = "scaled_dot_product_attention"
    batch = _check_attention_inputs(where, query, key, value, attn_mask, enable_gqa)
    if dropout_p != 0.0:
        raise ValueError(f"{where}: dropout_p must be 0.0 (attention dropout is not supported), got {dropout_p}")
    if is_causal and attn_mask is not None:
        raise ValueError(f"{where}: expected either attn_mask or is_causal=True, got both "
                         "(as in PyTorch; fold the causal mask into attn_mask)")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{where}: expected block_size to be a positive integer, got {block_size!r}")
    if enable_gqa and key.shape[-3] != query.shape[-3]:              # each key/value head serves a group
        groups = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
    query, key, value = (t if t.shape[:-2] == batch else t.expand(*batch, *t.shape[-2:])
                         for t in (query, key, value))                # (*, L, E), (*, S, E), (*, S, Ev)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    out, _ = autocast_apply(_scaled_dot_product_attention_apply, "lower", query, key, value, attn_mask,
                            is_causal, scale, block_size)
    return out


def attention_weights(query: Tensor, key: Tensor, attn_mask: Tensor | None = None,
                      is_causal: bool = False, scale: float | None = None) -> Tensor:
    r"""The attention probabilities :math:`P = \operatorname{softmax}(s\,QK^\top + B)`, for inspection.

    Built from differentiable torch ops (it materializes the :math:`L \times S`
    matrix that :func:`scaled_dot_product_attention` avoids keeping); the
    softmax runs in float32 for float16/bfloat16 inputs. Fully masked rows are
    all zeros. Use it to draw attention maps, or to change the temperature
    through ``scale``.

    Args:
        query: ``(*, L, E)``.
        key: ``(*, S, E)``.
        attn_mask: as in :func:`scaled_dot_product_attention`.
        is_causal: as in :func:`scaled_dot_product_attention`.
        scale: as in :func:`scaled_dot_product_attention`.

    Returns:
        ``(*, L, S)``, in the dtype of ``query``; each row sums to 1 (or is all
        zeros when fully masked).

    Examples:
        >>> weights = attention_weights(torch.randn(3, 4), torch.randn(5, 4))
        >>> weights.shape, torch.allclose(weights.sum(-1), torch.ones(3))
        (torch.Size([3, 5]), True)
    """
    _check_attention_inputs("attention_weights", query, key, key, attn_mask)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    ct = _compute_dtype(query.dtype)
    mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.to(ct)
    scores = _scores(query.to(ct), key.to(ct), mask, is_causal, scale)      # (*, L, S)
    fully_masked = (scores == float("-inf")).all(dim=-1, keepdim=True)       # (*, L, 1)
    scores = scores.masked_fill(fully_masked, 0.0)
    return torch.softmax(scores, dim=-1).masked_fill(fully_masked, 0.0).to(query.dtype)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A :class:`torch.nn.MultiheadAttention` mask as a float mask to add: boolean ``True`` (not allowed) -> -inf."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask


def _project(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` with :func:`layers.linear.linear`, in the autocast dtype under autocast."""
    return autocast_apply(linear, "lower", x, weight, bias)


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention, a drop-in for :class:`torch.nn.MultiheadAttention`.

    .. math::

        \operatorname{MHA}(Q, K, V) = [\,\text{head}_1, \dots, \text{head}_h\,]\,W_O^\top + b_O,
        \quad \text{head}_i = \operatorname{attention}(Q W_{Q,i}^\top + b_{Q,i},\,
        K W_{K,i}^\top + b_{K,i},\, V W_{V,i}^\top + b_{V,i})

    The projections are :func:`layers.linear.linear` and the attention is
    :func:`scaled_dot_product_attention`, all with hand-written backward passes.

    Arguments, defaults, shapes, mask meanings and return values are those of
    :class:`torch.nn.MultiheadAttention`; so are the parameter names
    (``in_proj_weight``, or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``
    when ``kdim``/``vdim`` differ from ``embed_dim``; ``in_proj_bias``;
    ``out_proj.weight``, ``out_proj.bias``). Keeping PyTorch's parameter layout
    instead of three separate projection modules means a ``state_dict`` moves
    between the two modules in both directions with no conversion code:
    ``ours.load_state_dict(torch_mha.state_dict())`` and back. :meth:`from_torch`
    and :meth:`to_torch` do that with the constructor arguments.

    Masks have :class:`torch.nn.MultiheadAttention`'s meaning, which is the
    opposite of :func:`scaled_dot_product_attention`'s for booleans: in
    ``key_padding_mask`` and ``attn_mask``, ``True`` marks a position that may
    *not* be attended to; float masks are added to the scores. A query row
    with no key left returns zeros (PyTorch returns NaN there).

    Not supported (``ValueError``): ``dropout > 0``, ``add_bias_kv=True``,
    ``add_zero_attn=True``.

    Args:
        embed_dim: model dimension :math:`E` (query features and output features).
        num_heads: number of heads :math:`h`; must divide ``embed_dim``.
        dropout: must be ``0.0``. Default: ``0.0``.
        bias: add biases to the input and output projections. Default: ``True``.
        add_bias_kv: must be ``False``. Default: ``False``.
        add_zero_attn: must be ``False``. Default: ``False``.
        kdim: features of ``key``; ``embed_dim`` if ``None``.
        vdim: features of ``value``; ``embed_dim`` if ``None``.
        batch_first: inputs and output are ``(N, L, E)`` instead of ``(L, N, E)``.
            Default: ``False`` (sequence first), as in PyTorch.
        device, dtype: factory arguments of the parameters.

    Shape:
        - query: :math:`(L, N, E)`, or :math:`(N, L, E)` with ``batch_first``, or
          unbatched :math:`(L, E)`; key: :math:`(S, N, E_k)`; value: :math:`(S, N, E_v)`
          (likewise).
        - key_padding_mask: :math:`(N, S)` or :math:`(S,)` unbatched, boolean
          (``True`` = ignore this key) or float (added).
        - attn_mask: :math:`(L, S)` or :math:`(N h, L, S)` (:math:`(h, L, S)`
          unbatched), boolean (``True`` = not allowed) or float (added).
        - Output: like query, :math:`(L, N, E)`; weights :math:`(N, L, S)`
          averaged over heads, or :math:`(N, h, L, S)` with
          ``average_attn_weights=False`` (without :math:`N` when unbatched).

    Attributes:
        in_proj_weight: :math:`(3E, E)`, the stacked query, key and value
            projections (``None`` when ``kdim``/``vdim`` differ from ``embed_dim``;
            then ``q_proj_weight`` :math:`(E, E)`, ``k_proj_weight`` :math:`(E, E_k)`,
            ``v_proj_weight`` :math:`(E, E_v)`). Xavier uniform.
        in_proj_bias: :math:`(3E,)`, zeros at initialization (``None`` without bias).
        out_proj: :class:`layers.linear.Linear` ``(E -> E)``, its bias zeros at
            initialization, as PyTorch does.

    Examples:
        >>> mha = MultiHeadAttention(16, num_heads=4, batch_first=True)
        >>> x = torch.randn(2, 5, 16)
        >>> out, weights = mha(x, x, x)
        >>> out.shape, weights.shape
        (torch.Size([2, 5, 16]), torch.Size([2, 5, 5]))
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        where = "MultiHeadAttention"
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"{where}: expected positive embed_dim and num_heads, "
                             f"got embed_dim={embed_dim}, num_heads={num_heads}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"{where}: expected embed_dim divisible by num_heads, "
                             f"got embed_dim={embed_dim}, num_heads={num_heads}")
        if dropout != 0.0:
            raise ValueError(f"{where}: dropout must be 0.0 (attention dropout is not supported), got {dropout}")
        if add_bias_kv:
            raise ValueError(f"{where}: add_bias_kv=True is not supported")
        if add_zero_attn:
            raise ValueError(f"{where}: add_zero_attn=True is not supported")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.bias_k = self.bias_v = None                              # as torch without add_bias_kv
        self.add_zero_attn = add_zero_attn
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize as :class:`torch.nn.MultiheadAttention`: Xavier-uniform inputs, zero biases."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(w)
        self.out_proj.reset_parameters()
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def _in_projections(self) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor | None, ...]]:
        """The query, key and value projection weights and biases (views of the packed parameters)."""
        if self._qkv_same_embed_dim:
            weights = self.in_proj_weight.chunk(3)                    # 3 x (E, E)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)   # 3 x (E,)
        return weights, biases

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``; returns ``(output, weights or None)``.

        Args:
            query: ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``) or ``(L, E)``.
            key: ``(S, N, kdim)`` (``(N, S, kdim)`` with ``batch_first``) or ``(S, kdim)``.
            value: ``(S, N, vdim)`` (``(N, S, vdim)`` with ``batch_first``) or ``(S, vdim)``.
            key_padding_mask: ``(N, S)`` or ``(S,)``; boolean ``True`` = this key
                is padding and is ignored, or float added to the scores.
            need_weights: also return the attention probabilities (computed
                separately with :func:`attention_weights`). Default: ``True``.
            attn_mask: ``(L, S)`` or ``(N * num_heads, L, S)``; boolean ``True`` =
                not allowed to attend, or float added to the scores.
            average_attn_weights: average the weights over heads (``(N, L, S)``)
                or keep them per head (``(N, num_heads, L, S)``).
            is_causal: query ``i`` attends only to keys ``j <= i``. In PyTorch it
                is a hint that ``attn_mask`` is the causal mask; here, with an
                ``attn_mask`` the mask is used as given, and without one the
                causal mask is applied.
        """
        where = "MultiHeadAttention"
        check_tensor(query, where, "query", size={-1: self.embed_dim})
        if query.dim() not in (2, 3):
            raise ValueError(f"{where}: expected query with 2 (unbatched) or 3 dimensions, got {query.dim()} "
                             f"(shape {tuple(query.shape)})")
        check_tensor(key, where, "key", ndim=query.dim(), size={-1: self.kdim})
        check_tensor(value, where, "value", ndim=query.dim(), size={-1: self.vdim})
        param = self.out_proj.weight                                  # checked here, so the message names us
        for name, t in (("query", query), ("key", key), ("value", value)):
            check_same_device(where, t, param, name)
            if autocast_dtype(t.device.type, "lower") is None:        # under autocast all are cast
                check_same_dtype(where, t, param, name)
        unbatched = query.dim() == 2
        if unbatched:                                                 # (L, E) -> (1, L, E)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)  # (1, S)
        elif not self.batch_first:                                    # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if not query.shape[0] == key.shape[0] == value.shape[0] or key.shape[1] != value.shape[1]:
            raise ValueError(f"{where}: expected query, key and value with the same batch size and key, value "
                             f"with the same length S, got {tuple(query.shape)}, {tuple(key.shape)} "
                             f"and {tuple(value.shape)} (batch first)")
        N, L, _ = query.shape
        S, H, hd = key.shape[1], self.num_heads, self.head_dim
        (w_q, w_k, w_v), (b_q, b_k, b_v) = self._in_projections()
        q = _project(query, w_q, b_q).unflatten(-1, (H, hd)).transpose(1, 2)   # (N, L, E) -> (N, H, L, hd)
        k = _project(key, w_k, b_k).unflatten(-1, (H, hd)).transpose(1, 2)     # (N, S, E) -> (N, H, S, hd)
        v = _project(value, w_v, b_v).unflatten(-1, (H, hd)).transpose(1, 2)   # (N, S, E) -> (N, H, S, hd)
        mask = None                                                   # additive, broadcastable to (N, H, L, S)
        if attn_mask is not None:
            check_tensor(attn_mask, where, "attn_mask", floating=False)
            shapes = {2: (L, S), 3: ((H if unbatched else N * H), L, S)}
            if tuple(attn_mask.shape) != shapes.get(attn_mask.dim()):
                raise ValueError(f"{where}: expected attn_mask of shape {shapes[2]} or {shapes[3]}, "
                                 f"got {tuple(attn_mask.shape)}")
            mask = _additive(attn_mask, q.dtype)
            mask = mask if mask.dim() == 2 else mask.view(N, H, L, S)            # (L, S) or (N, H, L, S)
        if key_padding_mask is not None:
            check_tensor(key_padding_mask, where, "key_padding_mask", floating=False)
            if tuple(key_padding_mask.shape) != (N, S):
                raise ValueError(f"{where}: expected key_padding_mask of shape {(S,) if unbatched else (N, S)}, "
                                 f"got {tuple(key_padding_mask.shape[unbatched:])}")
            padding = _additive(key_padding_mask, q.dtype).view(N, 1, 1, S)     # (N, 1, 1, S)
            mask = padding if mask is None else mask + padding                  # (N, H or 1, L, S)
        causal = is_causal and attn_mask is None
        if causal and mask is not None:                               # fold the causal mask into the padding
            mask = mask + _additive(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), q.dtype)
            causal = False
        attn = scaled_dot_product_attention(q, k, v, mask, is_causal=causal)    # (N, H, L, hd)
        attn = attn.transpose(1, 2).flatten(2)                        # (N, L, H, hd) -> (N, L, E)
        out = _project(attn, self.out_proj.weight, self.out_proj.bias)          # (N, L, E)
        weights = None
        if need_weights:
            weights = attention_weights(q, k, mask, causal)             # (N, H, L, S)
            weights = weights.mean(dim=1) if average_attn_weights else weights  # (N, L, S)
            weights = weights.squeeze(0) if unbatched else weights
        if unbatched:
            return out.squeeze(0), weights                            # (L, E)
        return (out if self.batch_first else out.transpose(0, 1)), weights     # (N, L, E) or (L, N, E)

    # ----------------------------------------------------------------- torch interop
    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A new :class:`MultiHeadAttention` with the constructor arguments and weights of ``module``."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"MultiHeadAttention.from_torch: expected a torch.nn.MultiheadAttention, "
                            f"got {type(module).__name__}")
        w = module.out_proj.weight
        ours = cls(module.embed_dim, module.num_heads, dropout=module.dropout, bias=module.in_proj_bias is not None,
                   add_bias_kv=module.bias_k is not None, add_zero_attn=module.add_zero_attn, kdim=module.kdim,
                   vdim=module.vdim, batch_first=module.batch_first, device=w.device, dtype=w.dtype)
        ours.load_state_dict(module.state_dict())
        return ours

    def to_torch(self) -> nn.MultiheadAttention:
        """A :class:`torch.nn.MultiheadAttention` with this module's constructor arguments and weights."""
        w = self.out_proj.weight
        module = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout,
                                       bias=self.in_proj_bias is not None, kdim=self.kdim, vdim=self.vdim,
                                       batch_first=self.batch_first, device=w.device, dtype=w.dtype)
        module.load_state_dict(self.state_dict())
        return module

    def extra_repr(self) -> str:
        extra = "" if self._qkv_same_embed_dim else f", kdim={self.kdim}, vdim={self.vdim}"
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"bias={self.in_proj_bias is not None}, batch_first={self.batch_first}{extra}")
