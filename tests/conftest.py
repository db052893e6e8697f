import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    import matplotlib.pyplot as plt
    plt.close("all")



@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one thread: for tiny tensors (gradcheck), waking a second
    thread per op costs more than the op itself (milliseconds on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
