"""Scaled dot-product attention with a memory-lean, hand-written backward.

Part of :mod:`layers.attention`, taught in the chapter "Attention" (``book/attention.ipynb``).

:class:`ScaledDotProductAttentionFunction` saves only ``q, k, v``, the mask and the per-row
logsumexp for backward, and walks over the queries in blocks of rows;
:func:`scaled_dot_product_attention` is its functional form and :func:`attention_weights`
returns the probability matrix itself, for plots.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..composable import autocast_apply, autocast_dtype, compilable_apply
from .._validation import check_same_device, check_same_dtype, check_tensor

__all__ = ["ScaledDotProductAttentionFunction", "scaled_dot_product_attention", "attention_weights"]


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
