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
