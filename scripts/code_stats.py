"""Size and shape of the package: modules, import arrows, circles, prose, long lines and functions.

python scripts/code_stats.py [PACKAGE_DIR] [README]   (defaults: resdepth, README.md)
"""

import ast
import io
import sys
import tokenize
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, name: str, is_pkg: bool) -> set[str]:
    """The resdepth modules a module imports (relative and absolute, at any depth of the file)."""
    out = set()
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = ((f"{base}.{node.module}" if node.module else base) if node.level
                   else node.module or "")
            if mod.split(".")[0] == "resdepth":
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "resdepth")
    return out


def prose_lines(source: str) -> tuple[int, int]:
    """(prose lines, non-blank lines): lines of a docstring, a comment or a message string."""
    prose: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            prose.add(tok.start[0])
        elif tok.type == tokenize.STRING and any(c.isalpha() for c in tok.string):
            if " " in tok.string.strip("\"'fbr"):  # words, not a key or a format
                prose.update(range(tok.start[0], tok.end[0] + 1))
    blank = sum(1 for line in source.splitlines() if line.strip())
    return len(prose), blank


def main(pkg: Path, readme: Path) -> None:
    files = sorted(pkg.rglob("*.py"))
    names = {module_name(f, pkg): f for f in files}
    arrows: dict[str, set[str]] = {}
    long_lines = long_funcs = prose = nonblank = 0
    funcs = []
    for name, f in names.items():
        src = f.read_text()
        tree = ast.parse(src)
        found = imports(tree, name, f.name == "__init__.py")
        arrows[name] = {m for m in found if m in names and m != name}
        long_lines += sum(1 for line in src.splitlines() if len(line) > 100)
        p, n = prose_lines(src)
        prose, nonblank = prose + p, nonblank + n
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 40:
                    funcs.append(f"{name}.{node.name} ({length})")
    arrows[pkg.name] = set()  # its one import, of load_run, is made when a user asks for it
    wing = lambda m: m.split(".")[1] if m.count(".") >= 1 else m  # noqa: E731
    wing_arrows = {(wing(a), wing(b)) for a, bs in arrows.items() for b in bs if wing(a) != wing(b)}
    print(f"modules: {len(names)}")
    for name in names:
        print(f"  {name}: {', '.join(sorted(arrows[name])) or '-'}")
    print(f"import arrows between modules: {sum(len(v) for v in arrows.values())}")
    print(f"import arrows between wings and top-level modules: {len(wing_arrows)}")
    print(f"circles: {circles(arrows) or 'none'}")
    print(f"README lines: {len(readme.read_text().splitlines()) if readme.exists() else 'n/a'}")
    print(f"prose lines: {prose} of {nonblank} non-blank ({100 * prose / nonblank:.0f}%)")
    print(f"lines over 100 characters: {long_lines}")
    print(f"functions over 40 lines: {len(funcs)}{': ' + ', '.join(funcs) if funcs else ''}")


def circles(arrows: dict[str, set[str]]) -> list[str]:
    """Each import circle once, as a -> b -> a."""
    found, seen = [], set()
    def walk(node, path):
        for nxt in sorted(arrows.get(node, ())):
            if nxt in path:
                cyc = path[path.index(nxt):]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    found.append(" -> ".join(cyc + [nxt]))
            elif len(path) < 12:
                walk(nxt, path + [nxt])
    for start in sorted(arrows):
        walk(start, [start])
    return found


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0] if args else "resdepth"), Path(args[1] if len(args) > 1 else "README.md"))
