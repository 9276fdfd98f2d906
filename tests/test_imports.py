"""No import loops in mindport, converters and parity (function-level imports count: a loop hidden in a function
still makes one module need the other's half-initialised state), the layering of shared/design.md
(converters imports neither mindport nor parity; mindport never imports parity, but for its command line and its
pytest helper `mindport.testing`), and no module named like a
standard-library module (with its folder on sys.path, `python mindport/cli.py` would shadow it)."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mindport", "converters", "parity")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports anywhere in its source (`from . import x` counts x if it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a non-module attribute: its module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_loops():
    found = cycles(graph())
    assert not found, "import loops: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_walker_sees_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_layering():
    g = graph()
    for name, deps in g.items():
        top = name.split(".")[0]
        bad = {d for d in deps if d.split(".")[0] in {"converters": ("mindport", "parity"),
                                                       "mindport": ("parity",)}.get(top, ())}
        if name in ("mindport.cli", "mindport.testing"):  # the command and the pytest helper sit on top of parity
            continue
        assert not bad, f"{name} imports {sorted(bad)} against the layering cli -> parity -> mindport -> converters"


def test_no_module_shadows_the_standard_library():
    clashes = sorted(str(p.relative_to(ROOT)) for p in modules().values()
                     if p.stem in sys.stdlib_module_names and p.stem != "__init__")
    assert not clashes, f"modules named like standard-library modules: {clashes}"
