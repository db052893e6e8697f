"""Custom PyTorch layers with hand-written backward passes.

Every layer is an ``autograd.Function`` (``forward``, ``setup_context``,
``backward``) wrapped by an ``nn.Module``, tested against PyTorch's own ops with
:func:`layers.testing.check_layer`. The book in ``book/`` teaches each module:

=====================  ==========================================
module                 chapter
=====================  ==========================================
``layers.linear``      Writing a backward pass
``layers.scale``       Modules and parameters
``layers.activations`` Activations
``layers.testing``     Writing a backward pass
``layers.viz``         (plotting helpers used by every chapter)
``layers.data``        (the digits data set used by every chapter)
``layers.training``    (the small training loop used by every chapter)
=====================  ==========================================
"""

from .activations import GELU, PReLU, ReLU, Sigmoid, Tanh, gelu, prelu, relu, sigmoid, tanh
from .linear import Linear, LinearFunction   # `linear` (the function) stays in layers.linear,
                                              # so the name layers.linear keeps meaning the module
from .scale import Scale, ScaleFunction

__all__ = [
    "Linear", "LinearFunction",
    "Scale", "ScaleFunction",
    "ReLU", "Sigmoid", "Tanh", "GELU", "PReLU",
    "relu", "sigmoid", "tanh", "gelu", "prelu",
]
__version__ = "0.1.0"
