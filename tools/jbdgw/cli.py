"""The `jbdgw` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import logging
import sys


class UsageError(Exception):
    """A bad argument or input file: printed as one line, exit status 2."""


def require_simulator(*paths: str) -> str:
    """The `micropython` binary, after checking that the simulation can run here.

    `sim` and `bench` need the MicroPython unix port and run the firmware, lib/ and
    tools/mpsim from the source checkout (`paths`, relative to it) that jbdgw was installed
    from in editable mode; a plain `pip install .` copies only the package. Either missing
    is a UsageError (one line, exit 2).
    """
    from jbdgw import REPO
    from jbdgw.sim import find_micropython

    try:
        micropython = find_micropython()
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    missing = [p for p in paths if not (REPO / p).exists()]
    if missing:
        raise UsageError(
            f"needs the project's source checkout, but {REPO} has no {', '.join(missing)}: "
            "run it from a clone installed with `make setup` or `pip install -e '.[sim]'`"
        )
    return micropython


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jbdgw", description=__doc__)
    parser.add_argument("--verbose", "-v", action="store_true", help="more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Each subcommand module exposes add_parser(sub) and sets func=run(args) -> int.
    from jbdgw import bench_cmd, energy_cmd, sim_cmd

    for mod in (sim_cmd, bench_cmd, energy_cmd):
        mod.add_parser(sub)
    # -v/--verbose after the subcommand as well (conventions); SUPPRESS keeps a -v given
    # before it from being reset by the subcommand's default.
    for subparser in sub.choices.values():
        subparser.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                               help="more detail")
    return parser


def subcommand_names(parser: argparse.ArgumentParser) -> list[str]:
    """The subcommands `parser` knows (for checks that must cover every one of them)."""
    return sorted(
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    )


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
