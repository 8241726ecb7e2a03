"""The service uses FastAPI and Starlette through their public names only.

A name that starts with an underscore (``fastapi._compat``, ``fastapi.routing._effective_route_context_var``) is
the framework's own business and may change in any release without notice. The scan reads every module under
``src/`` and fails on an import of such a module or name, and on reaching one as an attribute of an imported
framework module. ``ADAPTERS`` would name the one module allowed to do so (behind a version guard); there is none.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src"
FRAMEWORKS = ("fastapi", "starlette")
ADAPTERS: frozenset[str] = frozenset()


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _framework(dotted: str) -> bool:
    return dotted.split(".", maxsplit=1)[0] in FRAMEWORKS


def private_uses(tree: ast.AST) -> Iterator[str]:
    """Every private framework name ``tree`` imports or reaches through an imported framework module."""
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _framework(alias.name):
                    modules.add(alias.asname or alias.name.split(".")[0])
                    if _private(alias.name):
                        yield f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module and _framework(node.module) and node.level == 0:
            for alias in node.names:
                if _private(node.module) or _private(alias.name):
                    yield f"from {node.module} import {alias.name}"
                else:
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                yield f"{ast.unparse(node)}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            target, *rest = node.args
            name = rest[0] if rest else None
            root = target
            while isinstance(root, ast.Attribute):
                root = root.value
            if (
                isinstance(root, ast.Name)
                and root.id in modules
                and isinstance(name, ast.Constant)
                and isinstance(name.value, str)
                and _private(name.value)
            ):
                yield f"getattr({ast.unparse(target)}, {name.value!r})"


def test_no_module_uses_a_private_framework_name() -> None:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = path.relative_to(SOURCE).with_suffix("").as_posix().replace("/", ".")
        if module in ADAPTERS:
            continue
        found += [f"{module}: {use}" for use in private_uses(ast.parse(path.read_text(), str(path)))]
    assert found == []


def test_the_scan_sees_each_way_of_reaching_a_private_name() -> None:
    source = """
import fastapi.routing
import starlette._utils as utils
from fastapi._compat import field_annotation_is_sequence
from fastapi.routing import _effective_route_context_var, APIRoute
from starlette import routing
from library_api.private import _fine

fastapi.routing._effective_route_context_var
routing._private_helper
getattr(fastapi.routing, "_effective_route_context_var", None)
getattr(fastapi.routing, "iter_route_contexts")
APIRoute._embed_body_fields
fastapi.routing.APIRoute.__init__
"""
    assert sorted(private_uses(ast.parse(source))) == sorted(
        [
            "import starlette._utils",
            "from fastapi._compat import field_annotation_is_sequence",
            "from fastapi.routing import _effective_route_context_var",
            "fastapi.routing._effective_route_context_var",
            "routing._private_helper",
            "getattr(fastapi.routing, '_effective_route_context_var')",
            "APIRoute._embed_body_fields",
        ]
    )
