"""The house rules, read off the code: run by ``make lint`` and ``make test``.

Reads every import in ``app/`` (module level, inside functions and under TYPE_CHECKING)
and fails when:

- modules or folders import each other in a circle;
- an import runs up the layers below (against the event path: adapters → runtime →
  pipeline → stages → state → vocabulary) and is not one of the explained exceptions;
- anything but ``app.main`` (and ``app.api`` itself) imports ``app.api``;
- any module but the delivery lifecycle and the dispatcher writes ``deliveries`` or
  changes a destination's enablement;
- a file in ``app/`` is over 450 lines or a function over 80;
- a route handler commits (``commit()`` or ``session.begin()`` in ``app/api``).

``python tools/check_imports.py --report`` prints the figures without failing;
``--root DIR`` reads another tree (the tests use it).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Top to bottom: a module may import its own folder and anything below its layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("app.main", "app.cli")),
    ("HTTP adapters", ("app.api", "app.console")),
    ("what-if", ("app.policy.impact",)),
    ("read models", ("app.reports",)),
    ("runtime", ("app.runtime",)),
    ("privacy", ("app.privacy",)),
    ("sources", ("app.sources",)),
    ("ingest", ("app.ingest",)),
    ("pipeline", ("app.pipeline",)),
    ("routing", ("app.routing",)),
    ("delivery", ("app.delivery",)),
    ("matching", ("app.matching",)),
    ("scoring", ("app.scoring",)),
    ("policy", ("app.policy",)),
    ("keys", ("app.auth",)),
    ("infrastructure", ("app.db", "app.observability", "app.crypto")),
    ("vocabulary", ("app.events", "app.errors", "app.clock", "app.config")),
]

# Imports that run up the layers on purpose: (importer, imported) → why. At most four.
AGAINST_THE_FLOW: dict[tuple[str, str], str] = {}
MAX_AGAINST = 4

# Only these change delivery state (rows of ``deliveries``, a destination's ``enabled``);
# a package counts with its modules (the dispatcher's claim and record).
DELIVERY_WRITERS = ("app.delivery.lifecycle", "app.delivery.dispatcher")
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    found = {module_name(p, root): p for p in sorted((root / "app").rglob("*.py"))}
    found.pop("app", None)  # the empty root package
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The app modules this module imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from app.db import bulk`` imports the module app.db.bulk.
            targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets.append(base)
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def layer_of(name: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank < 0:
        raise SystemExit(f"{name}: in no layer; add it to LAYERS in {Path(__file__).name}")
    return rank


def folder_of(name: str, mods: dict[str, Path]) -> str:
    return name if mods[name].name == "__init__.py" else name.rpartition(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


WRITE = re.compile(
    r"(\bdeliveries\.(update|insert|delete)\(|(update|insert|delete)\(deliveries\b"
    r"|(UPDATE|INSERT INTO|DELETE FROM) deliveries\b|\(deliveries,"
    r"|destinations(_table)?\.update\(\)[^\n]*enabled|values\([^)]*\benabled=)"
)


def delivery_writers(mods: dict[str, Path]) -> dict[str, int]:
    found: dict[str, int] = {}
    for name, path in mods.items():
        if name == "app.db" or name.startswith("app.db."):
            continue  # the tables and the bulk statements themselves
        n = len(WRITE.findall(path.read_text()))
        if n:
            found[name] = n
    return found


def long_functions(mods: dict[str, Path]) -> list[str]:
    out = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - first + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{name}.{node.name}: {length} lines")
    return out


def handler_commits(mods: dict[str, Path], root: Path) -> list[str]:
    out = []
    for name, path in mods.items():
        if not name.startswith("app.api") or name == "app.api.deps":
            continue  # the session dependency owns the unit of work
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.commit\(\)|session\.begin\(\)", line):
                out.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    return out


def main(argv: list[str]) -> int:
    report = "--report" in argv
    root = Path(argv[argv.index("--root") + 1]) if "--root" in argv else ROOT
    mods = modules(root)
    known = set(mods)
    graph = {name: imports_of(name, path, known) for name, path in mods.items()}
    problems: list[str] = []
    for name in mods:
        layer_of(name)  # every module has its place, imports or not

    for comp in cycles(graph):
        problems.append("module circle: " + " → ".join(comp))
    folders: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        for b in targets:
            fa, fb = folder_of(a, mods), folder_of(b, mods)
            # a package's own __init__ and its modules are one folder
            if fa != fb and not fb.startswith(fa + ".") and not fa.startswith(fb + "."):
                folders[fa].add(fb)
    for comp in cycles(folders):
        problems.append("folder circle: " + " → ".join(comp))

    against = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            if folder_of(a, mods) == folder_of(b, mods):
                continue
            if layer_of(b) < layer_of(a):
                against.append((a, b))
    for a, b in against:
        if (a, b) not in AGAINST_THE_FLOW:
            la, lb = LAYERS[layer_of(a)][0], LAYERS[layer_of(b)][0]
            problems.append(f"against the flow: {a} ({la}) imports {b} ({lb})")
    if len(AGAINST_THE_FLOW) > MAX_AGAINST:
        problems.append(f"{len(AGAINST_THE_FLOW)} explained exceptions; at most {MAX_AGAINST}")

    for a, targets in sorted(graph.items()):
        for b in targets:
            if b.startswith("app.api") and not (a == "app.main" or a.startswith("app.api")):
                problems.append(f"{a} imports {b}: only app.main mounts the API")

    writers = delivery_writers(mods)
    for name, n in sorted(writers.items()):
        if not any(name == w or name.startswith(w + ".") for w in DELIVERY_WRITERS):
            problems.append(f"{name} writes delivery state ({n} statements)")

    for path in mods.values():
        n = len(path.read_text().splitlines())
        if n > MAX_FILE_LINES:
            problems.append(f"{path.relative_to(root)}: {n} lines (at most {MAX_FILE_LINES})")
    problems += [f"{f} (at most {MAX_FUNCTION_LINES})" for f in long_functions(mods)]
    problems += [f"a route handler commits: {c}" for c in handler_commits(mods, root)]

    edges = sum(len(t) for t in graph.values())
    print(
        f"{len(mods)} modules, {edges} imports between them, {len(against)} against the "
        f"flow ({len(AGAINST_THE_FLOW)} explained), delivery state written by "
        f"{', '.join(sorted(writers)) or 'nobody'}",
        file=sys.stderr,
    )
    for p in problems:
        print(p, file=sys.stderr)
    return 0 if report or not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
