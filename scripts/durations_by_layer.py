"""Sum test durations per top-level test directory, to see which layer of the suite the time goes to.

Input is either pytest's JUnit XML report (``pytest --junitxml=FILE``: one time per test, setup and teardown
included) or the text of ``pytest --durations=0`` (one line per phase: ``1.23s call tests/x/test_y.py::test``;
pytest leaves out phases under 5 ms unless run with ``-vv``, so the JUnit report gives the true test counts).
Under xdist the figures are test time summed over all workers, not wall time: with N workers the wall time
of a layer is at best its sum divided by N. docs/testing.md ("Where the time goes") gives the commands.

    python scripts/durations_by_layer.py .cache/junit.xml
    python scripts/durations_by_layer.py .cache/pytest.log --markdown
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

DURATION_LINE = re.compile(r"^\s*(?P<seconds>[0-9]+(?:\.[0-9]+)?)s\s+(?:setup|call|teardown)\s+(?P<nodeid>\S+)")
TOP_LEVEL = "tests/ (top level)"


@dataclass
class Layer:
    """The tests of one top-level directory: how many, their summed time, and the slowest one."""

    tests: set[str] = field(default_factory=set)
    seconds: float = 0.0
    slowest: tuple[float, str] = (0.0, "")


def layer_of_nodeid(nodeid: str) -> str:
    """``tests/server/test_serve.py::test_x`` -> ``tests/server``; a module directly under tests/ -> TOP_LEVEL."""
    parts = nodeid.split("::", 1)[0].split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else TOP_LEVEL


def layer_of_classname(classname: str) -> str:
    """JUnit's ``tests.server.test_serve`` (or ``tests.server.test_serve.TestClass``) -> ``tests/server``."""
    parts = classname.split(".")
    return f"{parts[0]}/{parts[1]}" if len(parts) > 2 and not parts[1].startswith("test_") else TOP_LEVEL


def read_junit(path: Path) -> list[tuple[str, str, float]]:
    """(layer, test id, seconds) for every test case of a JUnit XML report."""
    rows = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        classname = case.get("classname", "")
        rows.append((layer_of_classname(classname), f"{classname}::{case.get('name')}", float(case.get("time", 0))))
    return rows


def read_durations(text: str) -> list[tuple[str, str, float]]:
    """(layer, test id, seconds) for every phase line of ``--durations=0`` output."""
    return [
        (layer_of_nodeid(match["nodeid"]), match["nodeid"], float(match["seconds"]))
        for match in map(DURATION_LINE.match, text.splitlines())
        if match is not None
    ]


def summarise(rows: list[tuple[str, str, float]]) -> dict[str, Layer]:
    """Per layer: the distinct tests, their summed time and the slowest test (its phases added up)."""
    layers: dict[str, Layer] = defaultdict(Layer)
    per_test: dict[tuple[str, str], float] = defaultdict(float)
    for layer, test, seconds in rows:
        layers[layer].tests.add(test)
        layers[layer].seconds += seconds
        per_test[layer, test] += seconds
    for (layer, test), seconds in per_test.items():
        if seconds > layers[layer].slowest[0]:
            layers[layer].slowest = (seconds, test)
    return dict(layers)


def render(layers: dict[str, Layer], markdown: bool) -> str:
    """A table of the layers, most time first, with each one's share of the total."""
    total = sum(layer.seconds for layer in layers.values()) or 1.0
    ordered = sorted(layers.items(), key=lambda item: item[1].seconds, reverse=True)
    if markdown:
        lines = ["| Layer | Tests | Test time (s) | Share | Slowest test (s) |", "|---|---:|---:|---:|---|"]
        for name, layer in ordered:
            slowest = f"{layer.slowest[1]} ({layer.slowest[0]:.1f})"
            share = f"{100 * layer.seconds / total:.0f}%"
            lines.append(f"| `{name}` | {len(layer.tests)} | {layer.seconds:.1f} | {share} | {slowest} |")
        lines.append(f"| **total** | {sum(len(layer.tests) for layer in layers.values())} | {total:.1f} | 100% | |")
        return "\n".join(lines)
    lines = [f"{'layer':<28} {'tests':>6} {'seconds':>9} {'share':>6}  slowest"]
    for name, layer in ordered:
        share = f"{100 * layer.seconds / total:.0f}%"
        slowest = f"{layer.slowest[0]:.1f}s {layer.slowest[1]}"
        lines.append(f"{name:<28} {len(layer.tests):>6} {layer.seconds:>9.1f} {share:>6}  {slowest}")
    lines.append(f"{'total':<28} {sum(len(layer.tests) for layer in layers.values()):>6} {total:>9.1f}")
    return "\n".join(lines)


def main() -> int:
    """Read a JUnit report or ``--durations=0`` output and print the time per top-level test directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="a --junitxml report, or a file holding --durations=0 output")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for docs/testing.md)")
    args = parser.parse_args()
    text = args.report.read_text(encoding="utf-8", errors="replace")
    rows = read_junit(args.report) if text.lstrip().startswith("<") else read_durations(text)
    if not rows:
        print(f"{args.report}: no test durations found (use --junitxml=FILE or --durations=0)", file=sys.stderr)
        return 1
    print(render(summarise(rows), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
