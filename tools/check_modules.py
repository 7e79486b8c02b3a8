"""The module rules of ``cli/batchscore`` (issue 19), checked by ``make lint``:

- no import circle between batchscore's modules (an import inside a function counts: it is
  still a dependency, only a later one);
- no module imports another module's ``_private`` name;
- no module is over :data:`MAX_LINES` lines, except those in :data:`LONGER` with the reason.

    .venv/bin/python tools/check_modules.py        # exit 1 and one line per breach
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "cli"
MAX_LINES = 650
LONGER = {
    "batchscore.app": "typer's option declarations: `score` declares ~60 options in its signature",
}


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    found = {}
    for path in sorted((ROOT / "batchscore").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], list[str]]:
    """The batchscore modules ``name`` imports, and its imports of other modules' private names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    private: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.partition(".")[0] == "batchscore")
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base.partition(".")[0] != "batchscore":
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    targets.add(f"{base}.{alias.name}")
                    continue
                targets.add(base)
                if alias.name.startswith("_") and not alias.name.startswith("__") and base != name:
                    private.append(f"{name} imports {base}.{alias.name}")
    return targets & known.keys(), private


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def main() -> int:
    known = modules()
    graph: dict[str, set[str]] = {}
    breaches: list[str] = []
    for name, path in known.items():
        graph[name], private = imports(name, path, known)
        graph[name].discard(name)
        breaches += private
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and name not in LONGER:
            breaches.append(f"{name} has {lines} lines (more than {MAX_LINES}): split it")
    breaches += [f"import circle: {' <-> '.join(c)}" for c in circles(graph)]
    for breach in breaches:
        print(f"tools/check_modules.py: {breach}", file=sys.stderr)
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
