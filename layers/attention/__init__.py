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

The package: ``layers.attention.sdpa`` (the Function, :func:`scaled_dot_product_attention` and
:func:`attention_weights`) and ``layers.attention.multihead`` (:class:`MultiHeadAttention`);
every name is importable from ``layers.attention``.
"""

from .multihead import MultiHeadAttention
from .sdpa import (DEFAULT_BLOCK_SIZE, ScaledDotProductAttentionFunction, attention_weights,
                   scaled_dot_product_attention)

__all__ = [
    "ScaledDotProductAttentionFunction",
    "scaled_dot_product_attention",
    "attention_weights",
    "MultiHeadAttention",
]

# Public names report the package as their module (as torch does for torch.nn, and as
# layers.quantization does): the API page, cross-references such as ``layers.MultiHeadAttention`` and
# pickles all use ``layers.attention.<name>``.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
