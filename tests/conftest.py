import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture
def loom_paths(tmp_path):
    """Paths rooted in a temporary folder, installed as the process default for the test."""
    from engine import paths as paths_mod

    previous = paths_mod._default
    p = paths_mod.Paths(base=tmp_path)
    for d in (p.input_dir, p.output_dir):
        d.mkdir(parents=True, exist_ok=True)
    paths_mod.set_default_paths(p)
    yield p
    paths_mod._default = previous


@pytest.fixture(autouse=True)
def fresh_caches():
    """Each test starts with an empty output cache and model manager (default budget); runs within
    a test share them, as runs in one Loom process do."""
    from engine import executor, memory

    executor._default_cache = None
    memory._manager = None
    yield
    executor._default_cache = None
    memory._manager = None
