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


def pytest_collection_modifyitems(config, items):
    from netdsl.backend import gpu_available
    if not gpu_available():
        skip = pytest.mark.skip(reason="no CUDA device / CuPy")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
