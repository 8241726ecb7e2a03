"""The module-cycle contract that `make lint` runs (scripts/import_cycles.py) finds cycles, TYPE_CHECKING ones too."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grimp
import pytest
from importlinter.domain.contract import ContractCheck

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cycles() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """A directory on ``sys.path`` in which a test writes a package of its own."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def graph_of(*edges: tuple[str, str]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for importer, imported in edges:
        graph.add_import(importer=importer, imported=imported)
    return graph


def test_a_chain_without_a_way_back_is_acyclic(cycles: ModuleType) -> None:
    graph = graph_of(("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.a", "pkg.c"))
    assert cycles.strongly_connected(graph) == []


def test_every_module_of_an_indirect_cycle_is_named_and_nothing_else(cycles: ModuleType) -> None:
    graph = graph_of(
        ("pkg.a", "pkg.b"),
        ("pkg.b", "pkg.c"),
        ("pkg.c", "pkg.a"),
        ("pkg.c", "pkg.d"),  # leaves the cycle: not part of it
        ("pkg.x", "pkg.y"),
        ("pkg.y", "pkg.x"),
    )
    assert cycles.strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.x", "pkg.y"]]


def test_the_contract_is_broken_by_a_cycle_and_names_its_imports(cycles: ModuleType) -> None:
    contract = cycles.AcyclicModulesContract(name="cycles", session_options={}, contract_options={})
    broken: ContractCheck = contract.check(graph_of(("pkg.a", "pkg.b"), ("pkg.b", "pkg.a")), verbose=False)
    assert not broken.kept
    assert broken.metadata["edges"] == {"pkg.a": ["pkg.b"], "pkg.b": ["pkg.a"]}
    kept: ContractCheck = contract.check(graph_of(("pkg.a", "pkg.b")), verbose=False)
    assert kept.kept


def test_an_import_made_only_for_type_checking_closes_a_cycle(cycles: ModuleType, package: Path) -> None:
    write(
        package,
        {
            "layered/__init__.py": "",
            "layered/low.py": """
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from layered.high import High
            """,
            "layered/high.py": """
                from layered.low import *
            """,
        },
    )
    graph = grimp.build_graph("layered", cache_dir=None)
    assert cycles.strongly_connected(graph) == [["layered.high", "layered.low"]]
