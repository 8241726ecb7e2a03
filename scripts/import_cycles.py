"""An import-linter contract that fails on any import cycle between modules of the package.

import-linter's own ``acyclic_siblings`` contract looks at packages (a cycle between ``books`` and ``bookings`` as
wholes); this one looks at modules, as Python imports them, so that every module of the package can be imported
on its own in some order. ``TYPE_CHECKING`` imports count, as they do in import-linter's graph: a cycle hidden
behind ``TYPE_CHECKING`` is still two modules that cannot be understood one without the other.

Used from ``[tool.importlinter]`` in ``pyproject.toml`` (``make lint`` runs ``lint-imports``).
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain.contract import Contract, ContractCheck


def strongly_connected(graph: ImportGraph) -> list[list[str]]:
    """The groups of two or more modules that import one another, directly or through each other (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                group: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == module:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


class AcyclicModulesContract(Contract):
    """No module of the root package imports itself back through other modules."""

    type_name = "acyclic_modules"

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        """Kept when no two modules import one another, directly or indirectly."""
        groups = strongly_connected(graph)
        edges = {
            module: sorted(graph.find_modules_directly_imported_by(module) & set(group))
            for group in groups
            for module in group
        }
        return ContractCheck(kept=not groups, metadata={"groups": groups, "edges": edges})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """Name each group of modules that import one another, with the imports between them."""
        for group in check.metadata["groups"]:
            output.print_error("These modules import one another:")
            output.new_line()
            for module in group:
                for imported in check.metadata["edges"][module]:
                    output.print_error(f"- {module} -> {imported}", bold=False)
            output.new_line()
