import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def compose(overrides=()):
    """The resolved config (plain dict) for these overrides, as `resdepth train` would see it."""
    from resdepth.config import compose as compose_all

    return compose_all(list(overrides))[0]


def run_cli(*args, cwd=None, timeout=600, env=None):
    """`resdepth ARGS` in a real subprocess; returns CompletedProcess with text stdout/stderr."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "resdepth.cli", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def wait_for(predicate, timeout=600):
    """Polls until `predicate()` holds: wait for the very state a test then asserts on, never for
    one that usually comes just before it (a record is appended before its checkpoint is saved)."""
    t = time.time()
    while time.time() - t < timeout:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"
