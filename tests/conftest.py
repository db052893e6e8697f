import matplotlib
import pytest
import torch

from layers.kernels import _cpp

matplotlib.use("Agg")

_CPP_REPORT = pytest.StashKey[str]()


def pytest_sessionstart(session):
    """Build the C++ operators of layers.kernels (or load them from the build cache) once, in the
    main process, before any pytest-xdist worker starts, and time it for the summary."""
    if hasattr(session.config, "workerinput"):                # a worker: the main process did it
        return
    try:
        _cpp.load()
        report = f"ready in {_cpp.build_seconds():.1f} s (build directory {_cpp.build_dir()})"
    except Exception as exc:  # noqa: BLE001 -- no compiler, a stale library: the cpp tests fail and say why
        report = f"not built: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    session.config.stash[_CPP_REPORT] = report


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
