import matplotlib
import pytest
import torch

from layers.kernels import _cpp

matplotlib.use("Agg")

_CPP_REPORT = pytest.StashKey[str]()


# The C++ operators of layers.kernels are built (first time on a machine, about 20 s) or loaded
# from the build cache by the first test that needs them (the fixture below, used by
# test_kernels.py), in whichever pytest-xdist worker runs it, while the other worker goes on with
# its own tests. The summary says how that went: a worker hands its line to the main process.
_cpp_outcome: str | None = None


@pytest.fixture(scope="session")
def cpp_operators():
    """Build or load the C++ operators of layers.kernels once per process (a failure fails every
    test that uses this fixture, with the compiler's message)."""
    global _cpp_outcome
    try:
        _cpp.load()
    except Exception as exc:
        _cpp_outcome = f"not built: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        raise
    _cpp_outcome = f"ready in {_cpp.build_seconds():.1f} s (build directory {_cpp.build_dir()})"


def pytest_sessionfinish(session):
    if _cpp_outcome is None:                                  # no test here needed the operators
        return
    if hasattr(session.config, "workeroutput"):               # a worker: tell the main process
        session.config.workeroutput["cpp_report"] = _cpp_outcome
    else:
        session.config.stash[_CPP_REPORT] = _cpp_outcome


@pytest.hookimpl(optionalhook=True)                           # a pytest-xdist hook
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
