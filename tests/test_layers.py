"""Layering: no module of anna imports one from a higher floor, and every module of src/ is under 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "anna"

# Floors, lowest first. A module may import from its own floor and the ones below. The ground floor (through `plan`)
# imports no stage; the stages follow in data-flow order; the drivers sit on top.
FLOORS: list[tuple[str, ...]] = [
    ("errors", "artifacts", "runfolder"),
    ("units", "stats", "attention", "domain"),
    ("options",),
    ("adapters",),
    ("inventory",),
    ("plan",),
    ("prompts", "generate"),
    ("calibrate",),
    ("solve",),
    ("analyze",),
    ("budgets",),
    ("search",),
    ("export",),
    ("evaluate",),
    ("report_data",),
    ("report_plots",),
    ("report",),
    ("run", "api", "checks", "train"),
    ("cli", "boundary", "__init__"),
]
STAGES = ("calibrate", "analyze", "solve", "search", "export", "evaluate", "report", "run", "api", "cli")


def _floor(part: str) -> int:
    for i, names in enumerate(FLOORS):
        if part in names:
            return i
    raise AssertionError(f"anna.{part} is on no floor: add it to FLOORS")


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, first part below `anna.`) of every `anna.*` import that runs, at any depth (lazy ones included)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for b in ast.walk(tree) if isinstance(b, ast.If) and ast.unparse(b.test) == "TYPE_CHECKING"
                   for stmt in b.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:  # imports for type hints only never run
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "anna" else [f"anna.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("anna."):
                out.append((node.lineno, name.split(".")[1]))
    return out


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_module_is_on_a_floor_and_imports_none_above_it():
    bad = []
    for path in _modules():
        here = _floor(_part(path))
        for line, target in _imports(path):
            if _floor(target) > here:
                bad.append(f"{path.relative_to(SRC)}:{line} imports anna.{target} (floor {_floor(target)} > {here})")
    assert not bad, "\n".join(bad)


def test_the_ground_floor_imports_no_stage():
    ground = {p for names in FLOORS[: _floor("plan") + 1] for p in names}
    assert not ground & set(STAGES)
    bad = [(p, t) for p in _modules() if _part(p) in ground for _, t in _imports(p) if t in STAGES]
    assert not bad


def test_the_checker_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from anna.cli import main\n"
                     "def f():\n    from anna.search import search\n    import anna.export.checkpoint\n")
    assert sorted(t for _, t in _imports(probe)) == ["export", "search"]


def test_every_module_is_under_400_lines():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, long
