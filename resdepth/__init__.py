"""resdepth: plain vs residual CIFAR networks, the ResNet paper's degradation experiment, from the shell."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resdepth")  # pyproject.toml's version, as installed
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"


def __getattr__(name: str):
    """`from resdepth import load_run` (a run's net, config and metrics; resdepth/load.py), imported on first use so
    the command line starts without loading the data code."""
    if name == "load_run":
        from .training.load import load_run

        return load_run
    raise AttributeError(f"module 'resdepth' has no attribute {name!r}")
