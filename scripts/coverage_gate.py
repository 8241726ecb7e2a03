"""Fail unless every measured file of the package reaches the minimum coverage (not just the total)."""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    """Compare each file's coverage with the minimum and list the files below it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", help="coverage JSON report (coverage json -o FILE)")
    parser.add_argument("--min", type=float, default=90.0, help="minimum percent per file")
    args = parser.parse_args()
    with open(args.report, encoding="utf-8") as handle:
        files = json.load(handle)["files"]
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
