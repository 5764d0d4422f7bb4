"""The package's layers import only downwards (STYLE.md, ARCHITECTURE.md): a module never imports from a layer
listed above its own."""

import ast
from pathlib import Path

import maskray

# bottom to top; a module may import from its own layer and the ones before it
LAYERS = [
    ("errors", "files", "config", "provenance", "hardware", "memory", "distributed"),
    ("data",),
    ("measures",),
    ("diffusion",),
    ("training",),
    ("pipelines",),
    ("export",),
    ("evaluation",),
    ("demo",),
    ("serve",),
    ("commands", "cli", "__main__", "__init__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else "__init__"
    assert part in RANK, f"maskray.{part} is in no layer of tests/test_layers.py"
    return RANK[part]


def test_no_module_imports_from_a_layer_above_it():
    root = Path(maskray.__file__).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts)
        mine = _layer(module if len(rel.parts) > 1 else "maskray.__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maskray."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("maskray.")]
            for name in names:
                if _layer(name) > mine:
                    bad.append(f"{module} imports {name}")
    assert not bad, "\n".join(bad)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """maskray's modules -> the maskray modules each imports (at any depth of the file: a deferred import inside a
    function is still an edge). ``from maskray.x import y`` names module ``maskray.x.y`` where that is a module."""
    root = Path(maskray.__file__).parent
    paths = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if not base.startswith("maskray"):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    edges.add(sub if sub in paths else base)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in paths)
        edges.discard(module)
        graph[module] = {e for e in edges if e in paths}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as one cycle through it."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # name one cycle: walk from the first module, inside the group, back to it
        members, start = set(group), group[0]
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in members)
            back = start in nxt
            if back:
                cycles.append(path + [start])
                break
            step = next((w for w in nxt if w not in seen), None)
            if step is None:  # dead end inside the group: name the whole group
                cycles.append(group)
                break
            path.append(step)
            seen.add(step)
    return cycles


def test_no_import_cycle_among_maskray_modules():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_docs_architecture_pictures_the_layers_in_their_order():
    """docs/architecture.md's first picture has one line per layer of LAYERS, top to bottom (each line starts with
    one of the layer's names), so the picture cannot drift from the layers this test enforces."""
    text = (Path(maskray.__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    lines = [line for line in text.split("```")[1].splitlines() if line.strip()]
    firsts = [line.split()[0].rstrip(",").removesuffix("/").removesuffix(".py") for line in lines]
    shown = [RANK.get(first) for first in firsts]
    assert None not in shown, f"a line of the picture names no layer: {firsts}"
    assert shown == list(range(len(LAYERS) - 1, -1, -1)), f"the picture's layers are missing or out of order: {firsts}"
