"""Command line: ``tfplace`` / ``python -m tfplace``. Parses, prints, sets the exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfplace",
        description="Show what TensorFlow can use on this machine and what tfplace would pick.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    sub = parser.add_subparsers(dest="command")
    doctor = sub.add_parser("doctor", help="the machine report (the default command)")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code."""
    args = _parser().parse_args(argv)
    from tfplace.inventory import inventory
    from tfplace.report import make_report

    report = make_report(inventory())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
