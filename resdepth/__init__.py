"""resdepth: the ResNet paper's plain-vs-residual CIFAR experiment, from the shell."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resdepth")  # pyproject.toml's version, as installed
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"


def __getattr__(name: str):
    """`from resdepth import load_run`, loaded on first use: the CLI starts without data code."""
    if name == "load_run":
        from .training.load import load_run

        return load_run
    raise AttributeError(f"module 'resdepth' has no attribute {name!r}")
