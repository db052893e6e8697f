"""Small helpers shared by the test files."""

import pytest
import torch
import torch.distributed as dist

#: Skip a module of multi-process tests where torch.distributed has no gloo backend.
needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def sgd_step_lowers_loss(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                         lr: float = 0.05) -> tuple[float, float]:
    """One SGD step on MSE(model(x), target); returns (loss before, loss after)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = torch.nn.functional.mse_loss(model(x), target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(model(x), target)
    return loss.item(), after.item()


def batch_norm_biases(model: torch.nn.Module) -> tuple[str, ...]:
    """Names of the bias parameters of every layers.BatchNorm2d inside ``model``: in training
    mode their gradient, sum(g), is also a term of the input gradient (check_layer's shared_work)."""
    from layers.normalization import BatchNorm2d
    return tuple(f"{name}.bias" for name, m in model.named_modules()
                 if isinstance(m, BatchNorm2d) and m.bias is not None)
