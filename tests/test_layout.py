"""The layout shows the architecture: imports flow one way between the folders, and functions stay short.

process -> web -> checks -> (spool, config, names, ...) at the top; the tools
(hacheck/cli.py) import only the top. A module may import its own folder and
any folder below it, never one above.
"""

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "hacheck"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 60

# Each room and the rooms it may import from (besides itself and the top-level modules).
ROOMS = {"process": {"web", "checks"}, "web": {"checks"}, "checks": set(), "": set()}


def room(module: str) -> str:
    """``hacheck.web.app`` -> ``web``; a top-level module (``hacheck.spool``) -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ROOMS else ""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts[-1] = "x"  # a package's own __init__ sits in the package's room
    return ".".join(parts)


def imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hacheck"):
            for alias in node.names:  # `from hacheck.web import metrics` imports hacheck.web.metrics
                yield node.lineno, f"{node.module}.{alias.name}"


def test_every_room_is_known():
    folders = {path.parent.name for path in SOURCES if path.parent != PACKAGE}
    assert folders <= set(ROOMS), folders


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_imports_flow_one_way(path):
    here = room(module_name(path))
    allowed = ROOMS[here] | {here, ""}
    wrong = [f"line {line}: {name} (room {room(name) or 'top'})"
             for line, name in imported_modules(ast.parse(path.read_text()))
             if name.startswith("hacheck.") and room(name) not in allowed]
    assert not wrong, f"{path.relative_to(REPO_ROOT)} (room {here or 'top'}) imports upward: {wrong}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_no_function_is_longer_than_a_screen(path):
    long = [f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def layout_section() -> str:
    text = (REPO_ROOT / "docs" / "development.md").read_text()
    start = text.index("## Code layout\n")
    return text[start:text.index("\n## ", start + 1)]


def test_the_documented_layout_names_every_module_and_only_those():
    section = layout_section()
    relative = [str(path.relative_to(REPO_ROOT)) for path in SOURCES
                if path.name != "__init__.py" or path.parent.name == "checks"]
    # The protocol modules share one row, named without their folder.
    missing = [name for name in relative if f"`{name}`" not in section
               and not (name.startswith("hacheck/checks/") and f"`{Path(name).name}`" in section)]
    assert not missing, f"docs/development.md's code layout does not name {missing}"
    named = set(re.findall(r"`(hacheck/[\w/]+\.py)`", section))
    assert not named - set(relative), f"docs/development.md's code layout names {named - set(relative)}"
