"""The `jbdgw` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import logging
import sys


class UsageError(Exception):
    """A bad argument or input file: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jbdgw", description=__doc__)
    parser.add_argument("--verbose", "-v", action="store_true", help="more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Each subcommand module exposes add_parser(sub) and sets func=run(args) -> int.
    from jbdgw import bench_cmd, sim_cmd

    for mod in (sim_cmd, bench_cmd):
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"jbdgw {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
