import matplotlib
import pytest
import torch

from layers.kernels import _cpp

matplotlib.use("Agg")

_CPP_REPORT = pytest.StashKey[str]()


# The C++ operators of layers.kernels are built (first time on a machine, about 20 s) or loaded
# from the build cache by the first test that needs them (test_kernels.py's module fixture), in
# whichever pytest-xdist worker runs it, while the other worker goes on with its own tests. The
# summary says how long that took: a worker hands its line to the main process when it finishes.
def _cpp_report() -> str | None:
    seconds = _cpp.build_seconds()
    return None if seconds is None else f"ready in {seconds:.1f} s (build directory {_cpp.build_dir()})"


def pytest_sessionfinish(session):
    report = _cpp_report()
    if report is None:
        return
    if hasattr(session.config, "workeroutput"):               # a worker: tell the main process
        session.config.workeroutput["cpp_report"] = report
    else:
        session.config.stash[_CPP_REPORT] = report


def pytest_testnodedown(node, error):
    report = getattr(node, "workeroutput", {}).get("cpp_report")
    if report is not None:
        node.config.stash[_CPP_REPORT] = report


def pytest_terminal_summary(terminalreporter, config):
    if _CPP_REPORT in config.stash:
        terminalreporter.write_line(f"layers.kernels C++ operators: {config.stash[_CPP_REPORT]}")


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
