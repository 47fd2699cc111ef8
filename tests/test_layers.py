"""The library's floors: training, evaluation and detection stand on the runtime floor and the
shared pieces, never on each other; the pretraining loop knows no method by name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import localagg

ROOT = Path(localagg.__file__).parent
METHOD_NAMES = {"ir", "la", "supervised", "pretrain_ia", "pretrain_la", "instance_recognition", "local_aggregation"}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Absolute names of the localagg modules that `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    here = ["localagg", *path.relative_to(ROOT).with_suffix("").parts]
    if here[-1] == "__init__":
        here = here[:-1]
    else:
        here = here[:-1]  # the package the module is in
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
    return {n for n in found if n.startswith("localagg")}


@pytest.mark.parametrize("package, forbidden", [
    ("training", ("localagg.evaluation", "localagg.detection", "localagg.report")),
    ("evaluation", ("localagg.training", "localagg.detection", "localagg.report")),
    ("detection", ("localagg.training", "localagg.evaluation", "localagg.report")),
    ("runtime", ("localagg.training", "localagg.evaluation", "localagg.detection", "localagg.report")),
])
def test_a_floor_does_not_import_its_neighbours(package, forbidden):
    bad = [f"{p.relative_to(ROOT)} imports {name}" for p in _modules(package) for name in sorted(_imports(p))
           if name.startswith(forbidden)]
    assert not bad, bad


def test_the_report_does_not_import_torch():
    bad = [str(p.relative_to(ROOT)) for p in _modules("report")
           if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "torch" in ast.unparse(n).split()
                  for n in ast.walk(ast.parse(p.read_text())))]
    assert not bad, bad


@pytest.mark.parametrize("module", ["loop.py", "batches.py", "config.py", "methods/base.py"])
def test_the_loop_names_no_method(module):
    """No string, attribute or import of the shared training code names a method; methods
    are objects the loop is given."""
    tree = ast.parse((ROOT / "training" / module).read_text())
    named = [ast.unparse(n) for n in ast.walk(tree)
             if (isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in METHOD_NAMES)
             or (isinstance(n, ast.Attribute) and n.attr in METHOD_NAMES)
             or (isinstance(n, ast.ImportFrom) and n.module and set(n.module.split(".")) & METHOD_NAMES)]
    assert not named, named
