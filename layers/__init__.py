"""Custom PyTorch layers with hand-written backward passes.

Every layer is an ``autograd.Function`` (``forward``, ``setup_context``,
``backward``) wrapped by an ``nn.Module``, tested against PyTorch's own ops with
:func:`layers.testing.check_layer`. The book in ``book/`` teaches each module:

=========================  ==========================================
module                     chapter
=========================  ==========================================
``layers.scale``           Modules and parameters
``layers.linear``          Writing a backward pass
``layers.testing``         Writing a backward pass
``layers.activations``     Activations
``layers.conv``            Convolutions and normalization
``layers.normalization``   Convolutions and normalization
``layers.blocks``          Convolutions and normalization
``layers.attention``       Attention
``layers.losses``          Losses
``layers.quantization``    Quantization-aware training
``layers.measuring``       Custom layers in practice (speed and memory)
``layers.references``      (plain-torch references for tests, benchmarks, chapters)
``layers.teaching``        (exercise feedback used by every chapter)
``layers.composable``      (autocast, torch.compile and value-check helpers of every layer)
``layers.export``          Custom layers in practice (deployment)
``layers.robustness``      Custom layers in practice (adversarial examples)
``layers.parallel``        Custom layers in practice (tensor parallelism)
``layers.distributed``     Custom layers in practice (launcher, DDP, DTensor, FSDP2 checks)
``layers.viz``             (plotting helpers used by every chapter)
``layers.data``            (the digits data set used by every chapter)
``layers.training``        (the small training loop used by every chapter)
=========================  ==========================================

The most used names are re-exported here (``layers.Linear``, ``layers.Conv2d``, ...);
functions whose name is also a module's (``linear``) stay in their module.
"""

from .activations import GELU, PReLU, ReLU, Sigmoid, Tanh, gelu, prelu, relu, sigmoid, tanh
from .attention import MultiHeadAttention, scaled_dot_product_attention
from .blocks import DepthwiseSeparableConv2d, ResidualBlock
from .conv import Conv2d, conv2d
from .linear import Linear, LinearFunction   # `linear` (the function) stays in layers.linear,
                                              # so the name layers.linear keeps meaning the module
from .losses import (CrossEntropyLoss, FocalLoss, MSELoss, SoftmaxFocalLoss, cross_entropy,
                     focal_loss, mse_loss, softmax_focal_loss)
from .parallel import ColumnParallelLinear, RowParallelLinear
from .normalization import BatchNorm2d, LayerNorm, batch_norm, layer_norm
from .quantization import (FakeQuantize, QuantConv2d, QuantLinear, convert_to_qat, fake_quantize,
                           lsq_quantize, pact_quantize)
from .robustness import accuracy_under_attack, fgsm, pgd
from .scale import Scale, ScaleFunction

__all__ = [
    "Linear", "LinearFunction",
    "Scale", "ScaleFunction",
    "ReLU", "Sigmoid", "Tanh", "GELU", "PReLU",
    "relu", "sigmoid", "tanh", "gelu", "prelu",
    "Conv2d", "DepthwiseSeparableConv2d", "conv2d",
    "BatchNorm2d", "LayerNorm", "batch_norm", "layer_norm",
    "ResidualBlock",
    "MultiHeadAttention", "scaled_dot_product_attention",
    "MSELoss", "CrossEntropyLoss", "FocalLoss", "SoftmaxFocalLoss",
    "mse_loss", "cross_entropy", "focal_loss", "softmax_focal_loss",
    "FakeQuantize", "QuantLinear", "QuantConv2d", "convert_to_qat",
    "fake_quantize", "lsq_quantize", "pact_quantize",
    "ColumnParallelLinear", "RowParallelLinear",
    "fgsm", "pgd", "accuracy_under_attack",
]
__version__ = "0.1.0"
