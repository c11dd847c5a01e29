import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NETS = ROOT / "nets"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist10k"


@pytest.fixture
def nets_dir():
    return NETS


@pytest.fixture(autouse=True)
def same_worker_threads_for_every_test():
    """A command run in-process with --threads N sets the NumPy kernels' worker count for the
    whole process; put it back after each test, so that no test inherits another's setting
    (memory rules and float reduction orders depend on it)."""
    from netdsl.core import workspace
    before = workspace.threads()
    yield
    if workspace.threads() != before:
        workspace.set_threads(before)


def pytest_configure(config):
    # NETDSL_TEST_THREADS=N runs the suite as `--threads N` runs netdsl: N worker threads for
    # the NumPy kernels, BLAS and OpenMP/oneDNN (docs/testing.md, "Every host"). Unset: the
    # libraries' defaults and one NumPy worker, as a plain Executor in a script.
    threads = os.environ.get("NETDSL_TEST_THREADS")
    if threads:
        from netdsl.runtime import kernels
        kernels.set_threads(int(threads))


def pytest_collection_modifyitems(config, items):
    from netdsl.core.backend import gpu_available
    if not gpu_available():
        skip = pytest.mark.skip(reason="no CUDA device / CuPy")
        for item in items:
            # The marker, not item.keywords: keywords also hold directory names, so a checkout
            # in a folder called 'gpu' would skip every test.
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)
