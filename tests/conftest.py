import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`),
    restored afterwards: these tensors are small, and on a shared 2-core machine two OpenMP threads
    per process measured up to ten (MLP batches: 20-50) times slower. Both sides of every
    comparison run under the same setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def app_home(tmp_path, monkeypatch):
    """The app's library and run files (app_lib.store) go to a fresh folder in every test, never to
    the user's cache."""
    home = tmp_path / "schedule_lab_home"
    monkeypatch.setenv("SCHEDULE_LAB_HOME", str(home))
    return home
