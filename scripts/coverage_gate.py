"""Fail unless every measured file of the package reaches the minimum coverage (not just the total).

The minimum may be raised but never lowered below :data:`FLOOR`: ``make test`` passes a fixed value, and a lower
one given by hand is refused rather than obeyed, so that no setting can turn the gate into a formality.
"""

from __future__ import annotations

import argparse
import json
import sys

FLOOR = 90.0
"""The lowest per-file minimum the gate accepts."""


def main() -> int:
    """Compare each file's coverage with the minimum and list the files below it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", help="coverage JSON report (coverage json -o FILE)")
    parser.add_argument("--min", type=float, default=FLOOR, help=f"minimum percent per file (at least {FLOOR:g})")
    args = parser.parse_args()
    if not args.min >= FLOOR:  # also refuses NaN
        print(f"coverage gate: --min {args.min:g} is below the floor of {FLOOR:g}%; refusing to run", file=sys.stderr)
        return 2
    with open(args.report, encoding="utf-8") as handle:
        files = json.load(handle)["files"]
    if not files:
        print("coverage gate: the report measured no files (did the test processes record anything?)")
        return 1
    below = {
        name: data["summary"]["percent_covered"]
        for name, data in files.items()
        if data["summary"]["percent_covered"] < args.min
    }
    for name, percent in sorted(below.items(), key=lambda item: item[1]):
        print(f"coverage {percent:5.1f}% < {args.min:g}%: {name}")
    if below:
        print(f"{len(below)} of {len(files)} files are below the per-file minimum of {args.min:g}%")
        return 1
    print(f"all {len(files)} files have at least {args.min:g}% coverage")
    return 0


if __name__ == "__main__":
    sys.exit(main())
