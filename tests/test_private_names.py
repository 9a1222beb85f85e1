"""Another library's private names stay in hacheck/private_names.py.

ruff's SLF001 finds ``obj._name``; this finds what it cannot see: ``getattr``
and its kin with an underscored name, ``from library import _name``, and a
method of another library's object replaced by assignment.
"""

import ast

import pytest

from tests.conftest import REPO_ROOT

ALLOWED = "private_names.py"
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}
SOURCES = sorted(path for path in (REPO_ROOT / "hacheck").rglob("*.py") if path.name != ALLOWED)


def private_uses(source: str) -> list:
    """(line, what) for each use of a private name of another library in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and node.args[1].value.startswith("_")
                and not node.args[1].value.startswith("__")):
            found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
        elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("hacheck"):
            found += [(node.lineno, f"from {node.module} import {alias.name}")
                      for alias in node.names if alias.name.startswith("_")]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                # io_loop.add_handler = ...: a live object's method replaced (self.x = ... is one's own).
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id not in ("self", "cls") and target.attr in _LIBRARY_METHODS):
                    found.append((node.lineno, f"{target.value.id}.{target.attr} = ..."))
    return sorted(found)


# Methods of Tornado's objects that hacheck once replaced on live objects.
_LIBRARY_METHODS = {"add_handler", "remove_handler", "call_later", "add_callback", "_run_callback"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_no_private_name_of_another_library_outside_its_module(path):
    assert private_uses(path.read_text()) == []


def test_the_check_finds_each_kind_of_use():
    """The scan above would see a private name brought back anywhere else."""
    source = (
        "import sys\n"
        "clear = getattr(sys, '_clear_type_cache', None)\n"
        "from tornado.ioloop import _Selectable\n"
        "io_loop.add_handler = timed\n"
        "self.add_handler = mine\n"
        "name = getattr(obj, '__name__')\n"
    )
    assert private_uses(source) == [
        (2, "getattr(..., '_clear_type_cache')"),
        (3, "from tornado.ioloop import _Selectable"),
        (4, "io_loop.add_handler = ..."),
    ]
