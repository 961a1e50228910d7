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
def fresh_output_cache():
    """Each test starts with an empty process-wide output cache (runs within a test share it)."""
    from engine import executor

    executor._default_cache = None
    yield
    executor._default_cache = None
