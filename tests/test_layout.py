"""The package's shape: imports flow down through the wings, lines stay short."""

import ast
import re
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "resdepth"
GROUND = {"models", "rundir", "tables"}
# What each part may import, besides itself and the ground floor ("" is the package's __init__).
MAY_IMPORT = {
    "ground": set(),
    "data": set(),
    "config": {"data"},
    "training": {"data", "config"},
    "analysis": {"data", "config"},
    "sweep": {"data", "config", "training", "analysis"},
    "slurm": {"sweep"},
    "bench": {"data", "config", "training", "analysis", "sweep"},
    "completion": {"config"},
    "cli": {"data", "config", "training", "analysis", "sweep", "bench", "completion"},
    "__main__": {"cli", "completion"},
    "": {"training"},  # `from resdepth import load_run`
}


def part(module: str) -> str:
    """The wing or top-level module that `module` (e.g. 'resdepth.training.step') belongs to."""
    name = module.split(".")[1] if "." in module else ""
    return "ground" if name in GROUND else name


def is_module(package: Path, dotted: str) -> bool:
    path = package.parent.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imported(path: Path, package: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package in a file, at any depth."""
    here = path.relative_to(package.parent).parts[:-1]  # the file's package
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            if mod.split(".")[0] == package.name:
                subs = [f"{mod}.{a.name}" for a in node.names
                        if is_module(package, f"{mod}.{a.name}")]
                found += [(node.lineno, m) for m in subs or [mod]]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.split(".")[0] == package.name]
    return found


def forbidden_imports(package: Path) -> list[str]:
    """'file:line imports module' for each import that goes up or sideways against MAY_IMPORT."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("").parts
        me = part(".".join(rel[:-1] if rel[-1] == "__init__" else rel))
        for line, module in imported(path, package):
            them = part(module)
            if them in (me, "ground") and not (me == "ground" and them != "ground"):
                continue
            if them == "" and module == package.name:  # `from . import __version__`
                continue
            if them not in MAY_IMPORT.get(me, set()):
                bad.append(f"{path.relative_to(package.parent)}:{line} imports {module}")
    return bad


def circles(package: Path) -> list[list[str]]:
    """Import circles between modules (imports inside functions count: they still tie modules)."""
    arrows: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
        arrows[name] = {m for _, m in imported(path, package) if m != name}
    arrows[package.name] = set()  # its one import, of load_run, is made when a user asks for it
    found = []

    def visit(path: list[str]) -> None:
        for nxt in sorted(arrows.get(path[-1], ())):
            if nxt == path[0]:
                found.append(path + [nxt])
            elif nxt > path[0] and nxt not in path:  # each circle once, from its smallest module
                visit(path + [nxt])

    for start in sorted(arrows):
        visit([start])
    return found


def test_imports_flow_down_through_the_wings():
    assert forbidden_imports(PACKAGE) == []


def test_no_import_circles():
    assert circles(PACKAGE) == []


def test_the_layering_check_fails_on_a_forbidden_import(tmp_path):
    pkg = tmp_path / "resdepth"
    for name in ("training", "analysis", "data"):
        (pkg / name).mkdir(parents=True)
        (pkg / name / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("import torch\n")
    (pkg / "training" / "system.py").write_text("from ..models import x\n")
    (pkg / "analysis" / "plots.py").write_text("def f():\n    from ..training import system\n")
    (pkg / "data" / "splits.py").write_text("from resdepth.cli import main\n")
    (pkg / "cli.py").write_text("from .analysis import plots\n")
    assert forbidden_imports(pkg) == [
        "resdepth/analysis/plots.py:2 imports resdepth.training.system",
        "resdepth/data/splits.py:1 imports resdepth.cli"]
    (pkg / "analysis" / "plots.py").write_text("from . import report\n")
    (pkg / "analysis" / "report.py").write_text("def f():\n    from .plots import draw\n")
    assert circles(pkg) == [["resdepth.analysis.plots", "resdepth.analysis.report",
                             "resdepth.analysis.plots"]]


def python_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(REPO / "scripts").glob("*.py"),
                   *(REPO / "tests").glob("*.py")])


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_lines_are_at_most_100_characters(path):
    long = [i for i, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 100]
    assert long == [], f"{path.relative_to(REPO)}: lines {long} are over 100 characters"


def test_no_internal_jargon():
    # an old name for a module, not a word of the product
    word = re.compile(r"\bro" + r"oms?\b", re.I)
    files = [*python_files(), *(REPO / "docs").rglob("*.md"), REPO / "README.md",
             REPO / "CONTRIBUTING.md", *(REPO / "conf").rglob("*")]
    hits = [f"{p.relative_to(REPO)}:{i}" for p in files if p.is_file()
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if word.search(line)]
    assert hits == []
