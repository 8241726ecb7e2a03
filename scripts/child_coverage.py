"""Which test modules' child processes add coverage that nothing else in the suite adds.

Run after a suite run with ``-p tests.support.child_coverage`` and before ``coverage combine`` (see
docs/testing.md, "Coverage in parallel"): every child process then left a data file named after its test module,
``.coverage.<module>.<host>.pid<n>.<random>``, beside the test processes' own ``.coverage.<host>...`` files.
Module by module, the costliest children first (by the number of their data files), the script leaves a module's
files out of the combination and keeps them out only when not one line or branch of any file is lost. It prints
the modules whose children can be left unmeasured (``pytest.mark.children_unmeasured``) and, for the others, what
only they cover.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

MODULE_FILE = re.compile(r"^\.coverage\.(tests-[A-Za-z0-9_-]+)\.")

Covered = dict[str, tuple[int, int]]


def covered(coverage: Path, files: list[Path], scratch: Path) -> Covered:
    """Per source file, the lines and branches covered by ``files`` combined."""
    data, report = scratch / "combined", scratch / "combined.json"
    subprocess.run([coverage, "combine", "-q", "--keep", f"--data-file={data}", *files], check=True)
    subprocess.run([coverage, "json", "-q", f"--data-file={data}", "-o", report], check=True)
    found = json.loads(report.read_text())["files"]
    return {name: (f["summary"]["covered_lines"], f["summary"].get("covered_branches", 0)) for name, f in found.items()}


def main() -> int:
    """Report, module by module, whether its children's coverage is needed; 2 when there is nothing to read."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="?", default=Path(), help="where the data files are")
    parser.add_argument("--coverage", type=Path, default=Path(sys.executable).with_name("coverage"))
    options = parser.parse_args()
    by_module: dict[str | None, list[Path]] = defaultdict(list)
    for path in sorted(options.directory.glob(".coverage.*")):
        match = MODULE_FILE.match(path.name)
        by_module[match.group(1) if match else None].append(path)
    if len(by_module) < 2:
        print("no per-module data files: run the suite with -p tests.support.child_coverage first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        everything = covered(options.coverage, [p for paths in by_module.values() for p in paths], Path(scratch))
        left_out: set[str] = set()
        modules = sorted((m for m in by_module if m is not None), key=lambda m: (-len(by_module[m]), m))
        for module in modules:
            kept = [p for m, paths in by_module.items() if m not in left_out | {module} for p in paths]
            without = covered(options.coverage, kept, Path(scratch))
            lost = {
                name: (everything[name], without.get(name))
                for name in everything
                if without.get(name) != everything[name]
            }
            if lost:
                print(f"measure   {module}: only its children cover {lost}")
            else:
                left_out.add(module)
                print(f"unmeasure {module} ({len(by_module[module])} processes)")
    print("\nchildren that can run unmeasured, together:", *sorted(left_out), sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
