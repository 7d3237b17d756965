import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def compose(overrides=()):
    """The resolved config (plain dict) for these overrides, as `resdepth train` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from resdepth.config import CONF_DIR, to_plain

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_plain(hydra_compose("config", overrides=list(overrides)))


def run_cli(*args, cwd=None, timeout=600, env=None):
    """`resdepth ARGS` in a real subprocess; returns CompletedProcess with text stdout/stderr."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "resdepth.cli", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"
