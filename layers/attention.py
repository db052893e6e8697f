"""Attention with a memory-lean, hand-written backward, and multi-head attention built on it.

Taught in the chapter "Attention" (``book/attention.ipynb``).

:class:`ScaledDotProductAttentionFunction` computes
:math:`\\operatorname{softmax}(s\\,QK^\\top + B)\\,V` and saves only ``q, k, v``, the
output and the per-row logsumexp for backward (plus the caller's own mask
tensor, if any), never the :math:`L \\times S` probability matrix: backward
recomputes the probabilities from the logsumexp, as memory-efficient and flash
attention do. Forward and backward walk over the queries in blocks of rows, so
no :math:`L \\times S` temporary is built either: the largest one is a block
of ``block_size`` rows by :math:`S` keys. :func:`scaled_dot_product_attention`
is its functional form, with the semantics of
:func:`torch.nn.functional.scaled_dot_product_attention`;
:func:`attention_weights` returns the probability matrix itself, for plots.
:class:`MultiHeadAttention` projects with :class:`layers.linear.Linear` and
can load the weights of a :class:`torch.nn.MultiheadAttention`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._validation import check_same_device, check_same_dtype, check_tensor
from .linear import Linear

__all__ = [
    "ScaledDotProductAttentionFunction",
    "scaled_dot_product_attention",
    "attention_weights",
    "MultiHeadAttention",
]


#: Default number of query rows :class:`ScaledDotProductAttentionFunction` processes at a time.
DEFAULT_BLOCK_SIZE = 128


def _scores(q: Tensor, k: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float,
            inplace: bool = False, row0: int = 0) -> Tensor:
    """Masked attention scores :math:`s\\,QK^\\top + B`, shape ``(..., L, S)``.

    Positions that may not be attended to are ``-inf``: ``False`` entries of a
    boolean mask and the upper triangle above the diagonal when ``is_causal``.
    ``q`` may be a block of query rows that starts at row ``row0`` of the full
    query (the causal mask is offset by it; ``attn_mask`` must already be sliced
    to the block, see :func:`_mask_rows`). With ``inplace`` (no graph is being
    recorded) the masks are applied to the one score buffer instead of
    allocating a new one per step.
    """
    scores = q @ k.transpose(-2, -1)                       # (..., Lb, E) @ (..., E, S) -> (..., Lb, S)
    scores = scores.mul_(scale) if inplace else scores * scale
    if is_causal:
        Lb, S = scores.shape[-2:]
        rows = torch.arange(row0, row0 + Lb, device=q.device).unsqueeze(1)  # (Lb, 1): absolute query index
        drop = rows < torch.arange(S, device=q.device)                      # (Lb, S): j > i, upper-left aligned
        scores = scores.masked_fill_(drop, float("-inf")) if inplace else scores.masked_fill(drop, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:                                    # True = takes part
            drop = ~attn_mask
            scores = scores.masked_fill_(drop, float("-inf")) if inplace else scores.masked_fill(drop, float("-inf"))
        else:                                                                # additive float mask
            scores = scores.add_(attn_mask) if inplace else scores + attn_mask
    return scores


def _mask_rows(attn_mask: Tensor | None, start: int, stop: int) -> Tensor | None:
    """The rows ``start:stop`` of a mask broadcastable to ``(..., L, S)``.

    A mask whose query dimension is broadcast (1-D ``(S,)``, or size 1 in
    dimension -2) applies to every block as it is; otherwise dimension -2 is
    sliced, keeping the leading dimensions so it still broadcasts against the
    block's ``(..., stop - start, S)`` scores.
    """
    if attn_mask is None or attn_mask.dim() < 2 or attn_mask.shape[-2] == 1:
        return attn_mask
    return attn_mask[..., start:stop, :]                                     # (..., stop - start, S)


class ScaledDotProductAttentionFunction(torch.autograd.Function):
    r"""Attention :math:`O = PV`, :math:`P = \operatorname{softmax}(S)`, :math:`S = s\,QK^\top + B`.

    ``apply(q, k, v, attn_mask, is_causal, scale, block_size=128)`` returns
    ``(out, lse)`` where ``lse`` is the row logsumexp
    :math:`\ell_i = \log \sum_j e^{S_{ij}}`, shape ``(..., L)``. Only ``q, k, v,
    out, lse`` (and the caller's mask) are saved; backward recomputes
    :math:`P = e^{S - \ell}` and, for an upstream gradient :math:`dO`, computes

    .. math::

        dV = P^\top dO, \qquad dP = dO\,V^\top, \qquad
        D_i = \textstyle\sum_e dO_{ie} O_{ie} = \sum_j P_{ij} dP_{ij},

        dS = P \odot (dP - D\mathbf{1}^\top + d\ell\,\mathbf{1}^\top), \qquad
        dQ = s\,dS\,K, \qquad dK = s\,dS^\top Q .

    Both passes walk over the queries in blocks of ``block_size`` rows, so the
    largest temporary is a ``(..., block_size, S)`` block of scores, never the
    whole :math:`L \times S` matrix: forward computes each block's scores, row
    logsumexp and output; backward computes :math:`D` once, then per block
    recomputes :math:`P` from :math:`\ell`, writes that block's :math:`dQ` and
    accumulates :math:`dV` and :math:`dK` over the blocks. Each query row is
    independent of the others, so the result does not depend on ``block_size``
    (up to rounding).

    ``lse`` is a differentiable output (its gradient is :math:`P`), so the
    backward, written with differentiable torch ops on ``q, k, v`` and the
    outputs, is itself differentiable: double backward works.

    A fully masked row (every score ``-inf``) has ``out = 0``, ``lse = -inf``
    and zero gradients, as in :func:`torch.nn.functional.scaled_dot_product_attention`.
    The mask itself receives no gradient.
    """

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool,
                scale: float, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[Tensor, Tensor]:
        L = q.shape[-2]
        out = q.new_empty(*q.shape[:-1], v.shape[-1])                # (..., L, Ev), filled block by block
        lse = q.new_empty(q.shape[:-1])                              # (..., L)
        for start in range(0, L, block_size):
            stop = min(start + block_size, L)
            # forward runs without a graph, so the block's (..., Lb, S) buffer is updated in place
            scores = _scores(q[..., start:stop, :], k, _mask_rows(attn_mask, start, stop), is_causal, scale,
                             inplace=True, row0=start)               # (..., Lb, S)
            row_max = scores.amax(dim=-1, keepdim=True)              # (..., Lb, 1)
            row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)  # fully masked row: avoid -inf - -inf
            e = scores.sub_(row_max).exp_()                          # (..., Lb, S), in [0, 1]
            denom = e.sum(dim=-1, keepdim=True)                      # (..., Lb, 1), 0 for a fully masked row
            out[..., start:stop, :] = (e @ v) / torch.where(denom > 0, denom, torch.ones_like(denom))  # (..., Lb, Ev)
            lse[..., start:stop] = (row_max + torch.log(denom)).squeeze(-1)   # (..., Lb), -inf if fully masked
            del scores, e
        return out, lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, attn_mask, is_causal, scale, *rest = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, attn_mask)          # no (L, S) tensor is saved
        ctx.is_causal, ctx.scale = is_causal, scale
        ctx.block_size = rest[0] if rest else DEFAULT_BLOCK_SIZE
        ctx.num_inputs = len(inputs)
        ctx.set_materialize_grads(False)                             # an unused lse gets None, not zeros

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
        q, k, v, out, lse, attn_mask = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        no_grads = (None,) * (ctx.num_inputs - 3)                    # mask, is_causal, scale(, block_size)
        if grad_out is None and grad_lse is None:
            return (None, None, None, *no_grads)
        # A plain backward records no graph, so buffers may be overwritten in place;
        # under create_graph=True (double backward) every step must stay out of place.
        inplace = not torch.is_grad_enabled()
        L, scale = q.shape[-2], ctx.scale
        d_row = None
        if grad_out is not None and (need_q or need_k):
            d_row = (grad_out * out).sum(dim=-1, keepdim=True)      # (..., L, 1): D = rowsum(P * dP), once
        safe_lse = lse.masked_fill(lse == float("-inf"), float("inf"))   # (..., L); fully masked -> P = 0
        dq_blocks = []
        dq = torch.empty_like(q) if need_q and inplace else None     # (..., L, E), filled block by block
        dk = dv = None
        for start in range(0, L, ctx.block_size):
            stop = min(start + ctx.block_size, L)
            q_blk = q[..., start:stop, :]                                         # (..., Lb, E)
            scores = _scores(q_blk, k, _mask_rows(attn_mask, start, stop), ctx.is_causal, scale, inplace,
                             row0=start)                                          # (..., Lb, S), recomputed
            lse_blk = safe_lse[..., start:stop].unsqueeze(-1)                     # (..., Lb, 1)
            p = scores.sub_(lse_blk).exp_() if inplace else torch.exp(scores - lse_blk)  # (..., Lb, S)
            del scores
            go = None if grad_out is None else grad_out[..., start:stop, :]       # (..., Lb, Ev)
            if need_v and go is not None:
                dv_blk = p.transpose(-2, -1) @ go                 # (..., S, Lb) @ (..., Lb, Ev) -> (..., S, Ev)
                dv = dv_blk if dv is None else (dv.add_(dv_blk) if inplace else dv + dv_blk)
            if need_q or need_k:
                inner = None
                if go is not None:
                    dp = go @ v.transpose(-2, -1)                 # (..., Lb, Ev) @ (..., Ev, S) -> (..., Lb, S)
                    d_blk = d_row[..., start:stop, :]                             # (..., Lb, 1)
                    inner = dp.sub_(d_blk) if inplace else dp - d_blk             # (..., Lb, S)
                if grad_lse is not None:
                    g_lse = grad_lse[..., start:stop].unsqueeze(-1)               # (..., Lb, 1): d lse / d S = P
                    inner = g_lse if inner is None else inner + g_lse
                if inplace and inner.shape == p.shape:
                    ds = inner.mul_(p).mul_(scale)                                # (..., Lb, S), scale folded in
                else:
                    ds = p * inner * scale                                        # (..., Lb, S)
                if need_q:
                    dq_blk = ds @ k                               # (..., Lb, S) @ (..., S, E) -> (..., Lb, E)
                    if inplace:
                        dq[..., start:stop, :] = dq_blk
                    else:
                        dq_blocks.append(dq_blk)
                if need_k:
                    dk_blk = ds.transpose(-2, -1) @ q_blk         # (..., S, Lb) @ (..., Lb, E) -> (..., S, E)
                    dk = dk_blk if dk is None else (dk.add_(dk_blk) if inplace else dk + dk_blk)
                del ds, inner
            del p
        if need_q and not inplace:
            dq = torch.cat(dq_blocks, dim=-2) if dq_blocks else torch.zeros_like(q)   # (..., L, E)
        if L == 0:                                                   # no query block: the sums are empty
            dk = torch.zeros_like(k) if need_k else None
            dv = torch.zeros_like(v) if need_v and grad_out is not None else None
        return (dq, dk, dv, *no_grads)


def _check_attention_inputs(where: str, query: Tensor, key: Tensor, value: Tensor,
                            attn_mask: Tensor | None) -> None:
    check_tensor(query, where, "query", min_ndim=2)
    check_tensor(key, where, "key", min_ndim=2)
    check_tensor(value, where, "value", min_ndim=2)
    check_same_dtype(where, key, query, "key")
    check_same_dtype(where, value, query, "value")
    check_same_device(where, key, query, "key")
    check_same_device(where, value, query, "value")
    if not query.dim() == key.dim() == value.dim():
        raise ValueError(f"{where}: expected query, key and value with the same number of dimensions, "
                         f"got {query.dim()}, {key.dim()} and {value.dim()}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{where}: expected query and key with the same head dimension E, "
                         f"got {query.shape[-1]} and {key.shape[-1]}")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"{where}: expected key and value with the same sequence length S, "
                         f"got {key.shape[-2]} and {value.shape[-2]}")
    if not query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        raise ValueError(f"{where}: expected query, key and value with the same batch dimensions, got "
                         f"{tuple(query.shape[:-2])}, {tuple(key.shape[:-2])} and {tuple(value.shape[:-2])}")
    if attn_mask is not None:
        check_tensor(attn_mask, where, "attn_mask", floating=False)
        if attn_mask.dtype != torch.bool:
            if not attn_mask.is_floating_point():
                raise TypeError(f"{where}: expected attn_mask to be boolean or floating point, got {attn_mask.dtype}")
            check_same_dtype(where, attn_mask, query, "attn_mask")
        check_same_device(where, attn_mask, query, "attn_mask")
        target = (*query.shape[:-1], key.shape[-2])                 # (..., L, S)
        try:
            broadcast = torch.broadcast_shapes(attn_mask.shape, target)
        except RuntimeError:
            broadcast = None
        if broadcast != torch.Size(target):
            raise ValueError(f"{where}: expected attn_mask broadcastable to the scores' shape {target}, "
                             f"got {tuple(attn_mask.shape)}")


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Tensor | None = None, is_causal: bool = False,
                                 scale: float | None = None, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    r"""Attention :math:`\operatorname{softmax}(s\,QK^\top + B)\,V` with a memory-lean backward.

    Same semantics as :func:`torch.nn.functional.scaled_dot_product_attention`
    (without dropout), computed by :class:`ScaledDotProductAttentionFunction`,
    whose backward recomputes the probabilities from the saved row logsumexp
    instead of keeping the :math:`L \times S` matrix, and whose forward and
    backward both process the queries ``block_size`` rows at a time, so no
    :math:`L \times S` temporary exists either.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``.
        value: ``(..., S, Ev)``.
        attn_mask: ``None``, a boolean mask where ``True`` means "takes part in
            attention", or a float mask added to the scores (``-inf`` excludes);
            broadcastable to ``(..., L, S)``. It receives no gradient.
        is_causal: if ``True``, query ``i`` attends only to keys ``j <= i``
            (upper-left aligned, as in PyTorch). As in PyTorch, it may not be
            combined with ``attn_mask`` (fold the causal mask into ``attn_mask`` instead).
        scale: the factor :math:`s`; :math:`1/\sqrt{E}` if ``None``.
        block_size: query rows per block (keyword only). The largest temporary is
            ``(..., block_size, S)``; the result does not depend on it. Default: 128.

    Returns:
        ``(..., L, Ev)``. A query row with no key to attend to (fully masked)
        returns zeros and passes zero gradients, never NaN.

    Shape:
        - query: :math:`(*, L, E)`, key: :math:`(*, S, E)`, value: :math:`(*, S, E_v)`
          with the same batch dimensions :math:`*`.
        - Output: :math:`(*, L, E_v)`.

    Examples:
        >>> q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 3)
        >>> scaled_dot_product_attention(q, k, v, is_causal=True).shape
        torch.Size([2, 4, 5, 3])
    """
    _check_attention_inputs("scaled_dot_product_attention", query, key, value, attn_mask)
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: expected either attn_mask or is_causal=True, got both "
                         "(as in PyTorch; fold the causal mask into attn_mask)")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"scaled_dot_product_attention: expected block_size to be a positive integer, "
                         f"got {block_size!r}")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    out, _ = ScaledDotProductAttentionFunction.apply(query, key, value, attn_mask, is_causal, scale, block_size)
    return out


def attention_weights(query: Tensor, key: Tensor, attn_mask: Tensor | None = None,
                      is_causal: bool = False, scale: float | None = None) -> Tensor:
    r"""The attention probabilities :math:`P = \operatorname{softmax}(s\,QK^\top + B)`, for inspection.

    Built from differentiable torch ops (it materializes the :math:`L \times S`
    matrix that :func:`scaled_dot_product_attention` avoids keeping). Fully
    masked rows are all zeros. Use it to draw attention maps, or to change the
    temperature through ``scale``.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``.
        attn_mask: as in :func:`scaled_dot_product_attention`.
        is_causal: as in :func:`scaled_dot_product_attention`.
        scale: as in :func:`scaled_dot_product_attention`.

    Returns:
        ``(..., L, S)``; each row sums to 1 (or is all zeros when fully masked).

    Examples:
        >>> weights = attention_weights(torch.randn(3, 4), torch.randn(5, 4))
        >>> weights.shape, torch.allclose(weights.sum(-1), torch.ones(3))
        (torch.Size([3, 5]), True)
    """
    _check_attention_inputs("attention_weights", query, key, key, attn_mask)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    scores = _scores(query, key, attn_mask, is_causal, scale)                # (..., L, S)
    fully_masked = (scores == float("-inf")).all(dim=-1, keepdim=True)       # (..., L, 1)
    scores = scores.masked_fill(fully_masked, 0.0)
    return torch.softmax(scores, dim=-1).masked_fill(fully_masked, 0.0)


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention, batch first, with hand-written backward passes throughout.

    .. math::

        \operatorname{MHA}(Q, K, V) = [\,\text{head}_1, \dots, \text{head}_h\,]\,W_O^\top + b_O,
        \quad \text{head}_i = \operatorname{attention}(Q W_{Q,i}^\top, K W_{K,i}^\top, V W_{V,i}^\top)

    The projections are :class:`layers.linear.Linear` and the attention is
    :func:`scaled_dot_product_attention`. The weights of a
    :class:`torch.nn.MultiheadAttention` (``batch_first=True``) load with
    :meth:`load_from_torch` or :meth:`from_torch`, and :meth:`to_torch` goes back.

    Masks follow :func:`scaled_dot_product_attention`: a boolean ``True`` means
    "takes part". This is the opposite of :class:`torch.nn.MultiheadAttention`,
    whose boolean ``attn_mask`` marks the positions that are *not* allowed.

    Args:
        embed_dim: model dimension :math:`E` (query features and output features).
        num_heads: number of heads :math:`h`; must divide ``embed_dim``.
        bias: add biases to the four projections. Default: ``True``.
        kdim: features of ``key``; ``embed_dim`` if ``None``.
        vdim: features of ``value``; ``embed_dim`` if ``None``.

    Shape:
        - query: :math:`(B, L, E)`, key: :math:`(B, S, E_k)`, value: :math:`(B, S, E_v)`.
        - attn_mask: broadcastable to :math:`(B, h, L, S)`, e.g. :math:`(L, S)` or :math:`(B, 1, L, S)`.
        - Output: :math:`(B, L, E)`; weights :math:`(B, L, S)` averaged over heads, or
          :math:`(B, h, L, S)` with ``average_attn_weights=False``.

    Attributes:
        q_proj: :class:`layers.linear.Linear` ``(embed_dim -> embed_dim)``.
        k_proj: :class:`layers.linear.Linear` ``(kdim -> embed_dim)``.
        v_proj: :class:`layers.linear.Linear` ``(vdim -> embed_dim)``.
        out_proj: :class:`layers.linear.Linear` ``(embed_dim -> embed_dim)``.
            The three input projections are initialized with Xavier uniform and
            their biases with zeros, the output bias with zeros, as PyTorch does.

    Examples:
        >>> mha = MultiHeadAttention(16, num_heads=4)
        >>> x = torch.randn(2, 5, 16)
        >>> out, weights = mha(x, x, x, is_causal=True)
        >>> out.shape, weights
        (torch.Size([2, 5, 16]), None)
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, kdim: int | None = None,
                 vdim: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiHeadAttention: expected positive embed_dim and num_heads, "
                             f"got embed_dim={embed_dim}, num_heads={num_heads}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"MultiHeadAttention: expected embed_dim divisible by num_heads, "
                             f"got embed_dim={embed_dim}, num_heads={num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.q_proj = Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.v_proj = Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize as :class:`torch.nn.MultiheadAttention`: Xavier-uniform inputs, zero biases."""
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight)
        self.out_proj.reset_parameters()
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                is_causal: bool = False, need_weights: bool = False,
                average_attn_weights: bool = True) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``; returns ``(output, weights or None)``.

        Args:
            query: ``(B, L, embed_dim)``.
            key: ``(B, S, kdim)``.
            value: ``(B, S, vdim)``.
            attn_mask: boolean (``True`` = takes part) or additive float mask,
                broadcastable to ``(B, num_heads, L, S)``.
            is_causal: query ``i`` attends only to keys ``j <= i``; may be
                combined with ``attn_mask`` (both apply).
            need_weights: also return the attention probabilities (computed
                separately with :func:`attention_weights`).
            average_attn_weights: average the weights over heads (``(B, L, S)``)
                or keep them per head (``(B, num_heads, L, S)``).
        """
        where = "MultiHeadAttention"
        check_tensor(query, where, "query", ndim=3, size={-1: self.embed_dim})
        check_tensor(key, where, "key", ndim=3, size={-1: self.kdim})
        check_tensor(value, where, "value", ndim=3, size={-1: self.vdim})
        if not query.shape[0] == key.shape[0] == value.shape[0] or key.shape[1] != value.shape[1]:
            raise ValueError(f"{where}: expected query (B, L, E), key (B, S, kdim) and value (B, S, vdim) "
                             f"with the same B and S, got {tuple(query.shape)}, {tuple(key.shape)} "
                             f"and {tuple(value.shape)}")
        B, L, _ = query.shape
        S = key.shape[1]
        H, hd = self.num_heads, self.head_dim
        q = self.q_proj(query).view(B, L, H, hd).transpose(1, 2)     # (B, L, E) -> (B, H, L, hd)
        k = self.k_proj(key).view(B, S, H, hd).transpose(1, 2)       # (B, S, E) -> (B, H, S, hd)
        v = self.v_proj(value).view(B, S, H, hd).transpose(1, 2)     # (B, S, E) -> (B, H, S, hd)
        _check_attention_inputs(where, q, k, v, attn_mask)                    # mask vs (B, H, L, S)
        scale = 1.0 / math.sqrt(hd)
        attn, _ = ScaledDotProductAttentionFunction.apply(q, k, v, attn_mask, is_causal, scale)  # (B, H, L, hd)
        attn = attn.transpose(1, 2).reshape(B, L, self.embed_dim)    # (B, L, H, hd) -> (B, L, E)
        out = self.out_proj(attn)                                    # (B, L, E)
        weights = None
        if need_weights:
            weights = attention_weights(q, k, attn_mask, is_causal)  # (B, H, L, S)
            if average_attn_weights:
                weights = weights.mean(dim=1)                        # (B, L, S)
        return out, weights

    # ----------------------------------------------------------------- torch interop
    @torch.no_grad()
    def load_from_torch(self, module: nn.MultiheadAttention) -> "MultiHeadAttention":
        """Copy the weights of a :class:`torch.nn.MultiheadAttention` into this module; returns ``self``.

        The torch module must have the same ``embed_dim``, ``num_heads``,
        ``kdim``, ``vdim`` and bias setting, ``batch_first=True``, no
        ``bias_k``/``bias_v`` and no ``add_zero_attn``. Its dropout is ignored.
        """
        where = "MultiHeadAttention.load_from_torch"
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"{where}: expected a torch.nn.MultiheadAttention, got {type(module).__name__}")
        theirs = (module.embed_dim, module.num_heads, module.kdim, module.vdim, module.in_proj_bias is not None)
        ours = (self.embed_dim, self.num_heads, self.kdim, self.vdim, self.q_proj.bias is not None)
        if theirs != ours:
            raise ValueError(f"{where}: expected (embed_dim, num_heads, kdim, vdim, bias) = {ours}, got {theirs}")
        if not module.batch_first or module.bias_k is not None or module.add_zero_attn:
            raise ValueError(f"{where}: expected batch_first=True, add_bias_kv=False and add_zero_attn=False")
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.chunk(3)                 # 3 x (E, E)
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        biases = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None,) * 3
        for proj, w, b in zip((self.q_proj, self.k_proj, self.v_proj), weights, biases):
            proj.weight.copy_(w)
            if b is not None:
                proj.bias.copy_(b)
        self.out_proj.weight.copy_(module.out_proj.weight)
        if module.out_proj.bias is not None:
            self.out_proj.bias.copy_(module.out_proj.bias)
        return self

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A new :class:`MultiHeadAttention` with the sizes and weights of ``module``."""
        bias = module.in_proj_bias is not None
        ours = cls(module.embed_dim, module.num_heads, bias=bias, kdim=module.kdim, vdim=module.vdim,
                   device=module.out_proj.weight.device, dtype=module.out_proj.weight.dtype)
        return ours.load_from_torch(module)

    @torch.no_grad()
    def to_torch(self) -> nn.MultiheadAttention:
        """A :class:`torch.nn.MultiheadAttention` (``batch_first=True``) with this module's weights."""
        w = self.out_proj.weight
        module = nn.MultiheadAttention(self.embed_dim, self.num_heads, bias=self.q_proj.bias is not None,
                                       kdim=self.kdim, vdim=self.vdim, batch_first=True,
                                       device=w.device, dtype=w.dtype)
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if module._qkv_same_embed_dim:
            module.in_proj_weight.copy_(torch.cat([p.weight for p in projs]))     # (3E, E)
        else:
            module.q_proj_weight.copy_(self.q_proj.weight)
            module.k_proj_weight.copy_(self.k_proj.weight)
            module.v_proj_weight.copy_(self.v_proj.weight)
        if module.in_proj_bias is not None:
            module.in_proj_bias.copy_(torch.cat([p.bias for p in projs]))         # (3E,)
            module.out_proj.bias.copy_(self.out_proj.bias)
        module.out_proj.weight.copy_(self.out_proj.weight)
        return module

    def extra_repr(self) -> str:
        extra = "" if self.kdim == self.vdim == self.embed_dim else f", kdim={self.kdim}, vdim={self.vdim}"
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"bias={self.q_proj.bias is not None}{extra}")
