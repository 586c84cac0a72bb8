"""The module map of docs/architecture.md: a module may import its own layer and the ones below."""
import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "mindswin"

# Lowest first. docs/architecture.md says what each layer owns.
LAYERS = [
    ("fileio",),
    ("models",),
    ("checkpoint",),
    ("memory_plan",),
    ("config", "pretrained"),
    ("factory", "data", "amp"),
    ("engine",),
    ("cli",),
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _component(module: str) -> str:
    """``mindswin.engine.trainer`` -> ``engine``."""
    return module.split(".")[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """Every mindswin module ``path`` imports, at the top or inside a function."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("mindswin."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mindswin.") or target == "mindswin":
                # ``from . import x`` / ``from .. import x`` name submodules
                yield from ([f"{target}.{a.name}" for a in node.names] if target.count(".") == 0 else [target])


def test_every_module_belongs_to_a_layer():
    components = {_component(_module_name(p)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
                  or p.parent != PACKAGE}
    assert components <= set(LAYER_OF), f"add {sorted(components - set(LAYER_OF))} to LAYERS and the docs"


def test_no_layer_imports_a_higher_one():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the package facade re-exports the public API of every layer
        importer = _component(_module_name(path))
        for target in _imports(path):
            imported = _component(target)
            if imported in LAYER_OF and LAYER_OF[imported] > LAYER_OF[importer]:
                violations.append(f"{_module_name(path)} imports {target} ({importer} is below {imported})")
    assert not violations, "\n".join(violations)


def test_the_layer_check_sees_relative_and_lazy_imports():
    module = PACKAGE / "models" / "registry.py"
    imported = set(_imports(module))
    assert "mindswin.models.swin_v2" in imported  # ``from .swin_v2 import ...``
    lazy = PACKAGE / "config" / "checks.py"
    assert any(t.startswith("mindswin.models") for t in _imports(lazy))  # imported inside a function
