"""Multi-head attention, a drop-in :class:`torch.nn.MultiheadAttention`: :class:`MultiHeadAttention`.

Part of :mod:`layers.attention`, taught in the chapter "Attention" (``book/attention.ipynb``).

Built on :func:`~layers.attention.scaled_dot_product_attention` and :func:`layers.linear.linear`,
with PyTorch's arguments, mask meanings and parameter names.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..composable import autocast_apply, autocast_dtype
from .._validation import check_same_device, check_same_dtype, check_tensor
from ..linear import Linear, linear
from .sdpa import attention_weights, scaled_dot_product_attention

__all__ = ["MultiHeadAttention"]


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
