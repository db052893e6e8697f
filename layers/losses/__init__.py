"""Loss functions with hand-written, numerically stable backward passes.

Taught in the chapter "Losses" (``book/losses.ipynb``).

- :func:`mse_loss` / :class:`MSELoss`: mean squared error, as :func:`torch.nn.functional.mse_loss`.
- :func:`cross_entropy` / :class:`CrossEntropyLoss`: softmax cross-entropy, as
  :func:`torch.nn.functional.cross_entropy`: class-index or probability targets, class
  ``weight``, ``ignore_index`` and label smoothing. Its backward is the fused
  "softmax minus (smoothed, weighted) target", computed from the log-softmax so that large
  logits give no NaN.
- :func:`focal_loss` / :class:`FocalLoss`: the binary, sigmoid focal loss of RetinaNet, as
  torchvision's ``sigmoid_focal_loss``; ``gamma=0, alpha=-1`` is
  :func:`torch.nn.functional.binary_cross_entropy_with_logits` (``weight`` and
  ``pos_weight`` included).
- :func:`softmax_focal_loss` / :class:`SoftmaxFocalLoss`: its multi-class softmax form,
  :math:`-\\alpha_y (1 - p_y)^\\gamma \\log p_y`.

Each Function writes its local derivatives once, in a ``derivatives`` staticmethod that
follows the docstring's formula; ``backward`` multiplies them by the upstream gradient and
``jvp`` (forward-mode AD) by the input tangents. They are written in differentiable torch
ops on the saved inputs, so the losses are twice differentiable (``gradgradcheck``) away
from the points where the math itself is not (``gamma < 1`` at :math:`p_t = 1`).

Composability: every Function sets ``generate_vmap_rule = True`` (``torch.func.vmap``,
``jacrev``, ``hessian``) and has a ``jvp``. Under ``torch.autocast`` the functional forms
compute in float32 and return float32, as torch does for its losses
(:func:`layers.composable.autocast_apply` with ``"float32"``); float16/bfloat16 inputs outside
autocast are computed in float32 and the result is cast back. Checks that read tensor
values (class indices in range) run only in eager mode, so ``torch.compile(fullgraph=True)``
and ``torch.export`` see no graph break and no host synchronisation.

The package, one file per loss (every name is importable from ``layers.losses``):
``layers.losses.mse``, ``layers.losses.crossentropy`` and ``layers.losses.focal`` (binary and
softmax), on ``layers.losses._common``, the reductions and checks they share.
"""

from .crossentropy import CrossEntropyFunction, CrossEntropyLoss, cross_entropy
from .focal import (FocalLoss, FocalLossFunction, SoftmaxFocalLoss, SoftmaxFocalLossFunction, focal_loss,
                    softmax_focal_loss)
from .mse import MSELoss, MSELossFunction, mse_loss

__all__ = [
    "MSELossFunction", "CrossEntropyFunction", "FocalLossFunction", "SoftmaxFocalLossFunction",
    "mse_loss", "cross_entropy", "focal_loss", "softmax_focal_loss",
    "MSELoss", "CrossEntropyLoss", "FocalLoss", "SoftmaxFocalLoss",
]

# Public names report the package as their module (as torch does for torch.nn, and as
# layers.quantization does): the API page, cross-references such as ``layers.MSELoss`` and
# pickles all use ``layers.losses.<name>``.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
