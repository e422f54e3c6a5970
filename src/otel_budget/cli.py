"""The `otel-budget` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from otel_budget.config import ConfigError, load_config

__all__ = ["main"]


def _check_config(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            config = load_config(path)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        rules = len(config.sections) + len(config.routes) + len(config.tasks)
        print(f"{path}: ok ({len(config.sections)} section(s), {len(config.routes)} route and {len(config.tasks)} task override(s))" if rules else f"{path}: ok (no rules: built-in defaults)")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-budget",
        description="Per-request and per-task budgets on OpenTelemetry spans.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check-config", help="validate budgets files; exit 1 on any error", description="Validate budgets files."
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="a budgets TOML file")
    check.set_defaults(func=_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
