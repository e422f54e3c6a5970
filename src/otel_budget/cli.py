"""The `otel-budget` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from otel_budget import __version__, names
from otel_budget.config import BudgetConfig, ConfigError, load_config
from otel_budget.settings import Settings

if TYPE_CHECKING:
    from otel_budget.report import Report
    from otel_budget.results import ScopeResult
    from otel_budget.sources import TraceSpan

__all__ = ["build_parser", "main"]

DEFAULT_JAEGER = "http://127.0.0.1:16686"


def _check_config(args: argparse.Namespace) -> int:
    results = [_check_one(path) for path in args.files]
    if args.format == "json":
        print(json.dumps({"ok": all(r["ok"] for r in results), "files": results}, indent=2))
    for result in results if args.format == "text" else ():
        if result["ok"]:
            print(f"{result['file']}: ok ({result['summary']})")
        else:
            print(f"error: {result['error']}", file=sys.stderr)
    return 0 if all(r["ok"] for r in results) else 1


def _check_one(path: str) -> dict[str, Any]:
    """One file's verdict, as `--format json` prints it."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        problems = [{"key": p.key, "message": p.message} for p in exc.problems]
        return {"file": path, "ok": False, "error": str(exc), "problems": problems}
    counts = {"sections": len(config.sections), "routes": len(config.routes), "tasks": len(config.tasks)}
    summary = (
        f"{counts['sections']} section(s), {counts['routes']} route and {counts['tasks']} task override(s)"
        if any(counts.values()) else "no rules: built-in defaults"
    )  # fmt: skip
    return {"file": path, "ok": True, "summary": summary, **counts}


def _report(args: argparse.Namespace) -> int:
    from otel_budget.report import build_report, render_json, render_text
    from otel_budget.sources import (
        SourceError,
        UnknownServiceError,
        parse_lookback,
        read_jaeger,
        read_otlp_json,
    )

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    budgets: BudgetConfig | None = None
    capped: list[str] = []
    traces: dict[int, list[TraceSpan]] | None = {} if args.html else None
    budgets_path = args.budgets or Settings.from_env().config_path
    try:
        if budgets_path:
            budgets = load_config(budgets_path)
        if args.otlp_json:
            spans = []
            for path in args.otlp_json:
                progress(f"reading {path}")
                spans.extend(read_otlp_json(path, traces))
            sources = {"from": ", ".join(args.otlp_json)}
        else:
            lookback = parse_lookback(args.lookback)
            read = read_jaeger(
                args.jaeger, services=args.service or (), lookback_s=lookback, limit=args.limit, progress=progress
            )
            spans, capped = read.spans, read.capped
            sources = {"Jaeger": args.jaeger, "services": ", ".join(read.services) or "none", "last": args.lookback}
    except UnknownServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, SourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if budgets is not None:
        sources["budgets"] = budgets.source
    report = build_report(spans, budgets=budgets, top=args.top, sources=sources, capped=capped, trace_limit=args.limit)
    render = render_json if args.format == "json" else render_text
    sys.stdout.write(render(report, jaeger_url=args.jaeger))
    if args.html:
        try:
            _write_html(args, report, spans, traces if args.otlp_json else None, progress)
        except OSError as exc:
            print(f"error: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
            return 1
    return 1 if args.fail_on_violation and report.violations else 0


def _write_html(
    args: argparse.Namespace,
    report: Report,
    spans: list[ScopeResult],
    traces: dict[int, list[TraceSpan]] | None,
    progress: Callable[[str], None],
) -> None:
    """The HTML page: `report`, and waterfalls of the worst offenders' traces (from the file, else from Jaeger)."""
    from otel_budget._html import pick_waterfalls, render_html, waterfalls_for
    from otel_budget.sources import SourceError, read_jaeger_trace

    picked = pick_waterfalls(report, spans, args.waterfalls)
    found: dict[int, Sequence[TraceSpan] | str] = dict(traces or {})
    if traces is None:
        for scope in picked:
            if scope.trace_id in found:
                continue
            progress(f"jaeger: reading trace {scope.trace_id_hex} for its waterfall")
            try:
                found[scope.trace_id] = read_jaeger_trace(args.jaeger, scope.trace_id_hex)
            except SourceError as exc:
                print(f"warning: no waterfall for trace {scope.trace_id_hex}: {exc}", file=sys.stderr)
                found[scope.trace_id] = str(exc)
    page = render_html(report, waterfalls_for(picked, found), jaeger_url=args.jaeger)
    with open(args.html, "w", encoding="utf-8") as fh:
        fh.write(page)
    progress(f"wrote {args.html} ({len(report.offenders)} row(s), {len(picked)} waterfall(s))")


def _jaeger_url(text: str) -> str:
    """`host:port` means `http://host:port`."""
    return text if "://" in text else f"http://{text}"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _lookback(text: str) -> str:
    from otel_budget.sources import parse_lookback

    try:
        parse_lookback(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-budget",
        description="Per-request and per-task budgets on OpenTelemetry spans.",
        epilog="Run `otel-budget COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check-config", help="validate budgets files; exit 1 on any error", description="Validate budgets files."
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="a budgets TOML file")
    check.add_argument(
        "--format", choices=("text", "json"), default="text",
        help="text (default): a line per file, errors on stderr; json: one document on stdout with every file's problems",
    )  # fmt: skip
    check.set_defaults(func=_check_config)
    _add_report(commands)
    return parser


def _add_report(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report",
        help="top budget offenders by route/task and metric, from Jaeger or an OTLP/JSON file",
        description="Read recent traces and list the routes, tasks and scopes that break their budgets.\n"
        "Per route/task and metric: the p50 and p95 of the actual values (nearest rank), the limit,\n"
        "the number of budget.exceeded events and an example trace. Worst first.\n"
        "Progress goes to stderr, the report to stdout.",
        epilog="examples:\n"
        "  otel-budget report                                  # every service in the local Jaeger\n"
        "  otel-budget report --service shop --lookback 30m\n"
        "  otel-budget report --otlp-json traces.jsonl --format json\n"
        "  otel-budget report --html report.html               # also a self-contained HTML page\n\n"
        "A metric is listed once it has a limit: from its budget.exceeded events, or from the\n"
        f"budgets file (--budgets, default ${names.ENV_CONFIG}), which also lists metrics within budget.\n\n"
        "exit status: 0 report printed; 1 the traces or the budgets file could not be read, or (with\n"
        "--fail-on-violation) a budget.exceeded event was found; 2 usage error or no such service in Jaeger.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = report.add_argument_group("where the traces come from (default: Jaeger)")
    source.add_argument(
        "--jaeger", metavar="URL", default=DEFAULT_JAEGER, type=_jaeger_url,
        help=f"Jaeger query API, also used for trace links; host:port means http:// (default {DEFAULT_JAEGER})",
    )  # fmt: skip
    source.add_argument(
        "--service", metavar="NAME", action="append", help="a service to read (repeatable; default: every service Jaeger lists)"
    )
    source.add_argument(
        "--lookback", metavar="AGE", default="1h", type=_lookback, help="how far back, e.g. 30m, 1h, 2d (default 1h)"
    )
    source.add_argument(
        "--limit", metavar="N", type=_positive, default=500,
        help="most traces read per service, the newest first (default 500); the report warns when a service hit it",
    )  # fmt: skip
    source.add_argument(
        "--otlp-json", metavar="FILE", action="append",
        help="read an OTLP/JSON file instead of Jaeger: the collector's file exporter output or a "
        "Jaeger /api/v3/traces answer; - for stdin (repeatable)",
    )  # fmt: skip
    output = report.add_argument_group("output")
    output.add_argument("--budgets", metavar="FILE", help=f"budgets file for limits (default ${names.ENV_CONFIG})")
    output.add_argument("--top", metavar="N", type=_positive, default=20, help="rows to show (default 20)")
    output.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    output.add_argument(
        "--html", metavar="FILE",
        help="also write a self-contained HTML page to FILE: bars of p50/p95 against the limit, and the "
        "worst offenders' traces as waterfalls with the moment each limit was crossed",
    )  # fmt: skip
    output.add_argument(
        "--waterfalls", metavar="N", type=_positive, default=5,
        help="waterfalls in the --html page: the traces of the N worst offenders (default 5)",
    )  # fmt: skip
    output.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    output.add_argument(
        "--fail-on-violation", action="store_true",
        help="exit 1 when any scope read has a budget.exceeded event (a CI gate)",
    )  # fmt: skip
    report.set_defaults(func=_report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
