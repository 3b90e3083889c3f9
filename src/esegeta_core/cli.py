"""The ``esegeta`` command.

``esegeta methods`` lists every installed method (and the plugins that failed to
load, with the reason); ``esegeta methods NAME`` shows one method's parameters, read
from its JSON Schema. Plugins add commands of their own (``esegeta serve``) through the
hook ``esegeta_register_commands``; the core keeps the names.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from esegeta_core.catalog import MethodInfo, describe_method, list_methods, plugin_failures
from esegeta_core.errors import (
    EsegetaError,
    InvalidParamsError,
    PluginConflictError,
    PluginLoadError,
    did_you_mean,
)

if TYPE_CHECKING:
    from esegeta_core.plugin.commands import CommandTable, PluginCommand


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _ranks(ranks: Sequence[int]) -> str:
    return ",".join(f"{r}D" for r in ranks)


def schema_type(prop: dict[str, Any], defs: dict[str, Any] | None = None) -> str:
    """A short human-readable type for one JSON Schema property."""
    defs = defs or {}
    if "$ref" in prop:
        ref = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
        return schema_type(ref, defs) if ref else prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "x-python-type" in prop:
        return prop["title"]
    if "const" in prop:
        return json.dumps(prop["const"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " | ".join(schema_type(p, defs) for p in prop[key])
    kind = prop.get("type", "any")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(schema_type(p, defs) for p in prop["prefixItems"]) + "]"
        return f"list[{schema_type(prop.get('items', {}), defs)}]"
    return {
        "integer": "int",
        "number": "float",
        "string": "str",
        "boolean": "bool",
        "null": "None",
    }.get(kind, str(kind))


def _bounds(prop: dict[str, Any]) -> str:
    marks = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    return ", ".join(f"{sym} {prop[k]}" for k, sym in marks.items() if k in prop)


def format_method(info: MethodInfo) -> str:
    """The text ``esegeta methods NAME`` prints."""
    schema = info.schema
    required = set(schema.get("required", []))
    defs = schema.get("$defs", {})
    rows = []
    for name, prop in schema.get("properties", {}).items():
        default = "(required)" if name in required else json.dumps(prop.get("default"))
        desc = prop.get("description", "")
        if prop.get("aliases"):
            desc += f" Also accepted as: {', '.join(prop['aliases'])}."
        bounds = _bounds(prop)
        rows.append(
            [name, schema_type(prop, defs), default, desc + (f" [{bounds}]" if bounds else "")]
        )
    head = [
        f"{info.name}  (plugin {info.plugin})",
        info.description,
        f"family: {info.family}   output: {info.output}   ranks: {_ranks(info.ranks)}   "
        f"tasks: {', '.join(info.tasks)}   "
        f"needs layer: {'yes' if info.needs_layer else 'no'}   cost: {info.cost}   "
        f"deterministic: {'yes' if info.deterministic else 'no'}",
    ]
    if info.paper:
        head.append(f"paper: {info.paper}")
    if info.cost_note:
        head.append(f"cost: {info.cost_note}")
    for requirement in info.requirements:
        head.append(f"requires: {requirement}")
    if info.model_rules != "none":
        head.append(
            f"rules: {info.model_rules} (the core gives every activation call site a module "
            "of its own for the call; see the README's 'Real architectures')"
        )
    body = (
        _table(rows, ["parameter", "type", "default", "description"]) if rows else "no parameters"
    )
    return "\n".join(head) + "\n\n" + body


def markdown_table(methods: Sequence[MethodInfo]) -> str:
    """The methods as a Markdown table: name, plugin, family, ranks, layer, description."""
    lines = [
        "| method | plugin | family | ranks | layer | description |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        desc = m.description.replace("|", "\\|")
        if m.paper:
            desc += f" [paper]({m.paper})"
        layer = "yes" if m.needs_layer else ""
        lines.append(
            f"| `{m.name}` | {m.plugin} | {m.family} | {_ranks(m.ranks)} | {layer} | {desc} |"
        )
    return "\n".join(lines)


def cmd_methods(args: argparse.Namespace, out: TextIO) -> int:
    if args.name:
        info = describe_method(args.name)
        if args.json:
            out.write(json.dumps(info.to_dict(), indent=2) + "\n")
        else:
            out.write(format_method(info) + "\n")
        return 0
    from esegeta_core.plugin.manager import get_registry

    if args.plugin:  # a disabled, failed or unknown plugin says so instead of "no methods"
        get_registry().require_plugin(args.plugin)
    methods = list_methods(plugin=args.plugin, family=args.family)
    failures = plugin_failures()
    if args.json:
        out.write(
            json.dumps(
                {
                    "methods": [m.to_dict() for m in methods],
                    "failed_plugins": [
                        {"plugin": f.plugin, "source": f.source, "error": f.error} for f in failures
                    ],
                    "plugin_warnings": get_registry().warnings,
                },
                indent=2,
            )
            + "\n"
        )
        return 0
    if args.markdown:
        out.write(markdown_table(methods) + "\n")
        return 0
    rows = [
        [m.name, m.family, _ranks(m.ranks), "yes" if m.needs_layer else "", m.cost, m.description]
        for m in methods
    ]
    if rows:
        out.write(_table(rows, ["method", "family", "ranks", "layer", "cost", "description"]))
        plugins = sorted({m.plugin for m in methods})
        out.write(
            f"\n\n{len(methods)} methods from {len(plugins)} plugin(s): {', '.join(plugins)}\n"
        )
    elif args.plugin:
        from esegeta_core.plugin.executors import executor_sources

        provided = [name for name, source in executor_sources().items() if source == args.plugin]
        extra = f"; it provides the executor(s) {', '.join(provided)}" if provided else ""
        out.write(f"Plugin {args.plugin} provides no methods{extra}.\n")
    else:
        out.write("No methods installed. Install a backend, e.g. `pip install esegeta-captum`.\n")
    if failures:
        out.write("\nPlugins that failed to load:\n")
        for f in failures:
            out.write(f"  {f.plugin}: {f.error}  ({f.source})\n")
    if get_registry().warnings:  # refused or conflicting methods, unknown disabled names
        out.write("\nPlugin warnings:\n" + "".join(f"  {w}\n" for w in get_registry().warnings))
    return 0


def cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    from esegeta_core.config import config_schema

    out.write(json.dumps(config_schema(), indent=2) + "\n")
    return 0


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    from esegeta_core.config import load_config
    from esegeta_core.config_checks import check_config, method_problems
    from esegeta_core.runs import plan_jobs

    config = load_config(args.config)
    base = Path(args.config).resolve().parent
    # without --plan nothing about this host or its files is checked
    problems = check_config(config, base, plan=True) if args.plan else method_problems(config)
    jobs = []
    if args.plan and not any(p.startswith("inputs.") for p in problems):
        try:
            jobs = plan_jobs(config, base)
        except (EsegetaError, OSError, ValueError) as exc:
            problems.append(f"inputs: {exc}")
        # an unreadable file is planned as failing jobs: validation names it instead
        unreadable = {job.input_path: job.error for job in jobs if job.error}
        problems.extend(f"inputs: {error}" for error in unreadable.values())
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise InvalidParamsError(f"Config {args.config} has {len(problems)} problem(s):\n{listed}")
    out.write(f"{args.config}: valid ({len(config.methods)} methods")
    out.write(f", {len(jobs)} jobs)\n" if args.plan else ")\n")
    return 0


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from esegeta_core.config import load_config
    from esegeta_core.config_checks import require_valid
    from esegeta_core.runs import run

    config = _overridden(load_config(args.config), args)
    base = Path(args.config).resolve().parent
    # every method, its params and the run folder, checked before any job starts
    require_valid(config, base, source=args.config)
    summary = run(config, base, force=args.force)
    ok = len(summary.records) - len(summary.failed)
    out.write(
        f"{summary.run_dir}: {ok} of {len(summary.records)} jobs ok "
        f"({summary.skipped} finished earlier); summary in {summary.run_dir / 'summary.csv'}\n"
    )
    for record in summary.failed:
        first = (record.get("error") or "").splitlines()[:1]
        out.write(f"  {record['status']}: {record['job_id']}: {first[0] if first else ''}\n")
    return 0 if not summary.failed else 1


def cmd_executors(args: argparse.Namespace, out: TextIO) -> int:
    from esegeta_core.plugin.executors import executor_options, executors

    for name, cls in executors().items():
        out.write(f"{name}: {cls.summary}\n")
        for option, kind, description in executor_options(cls):
            out.write(f"    {option} ({kind}): {description}\n")
    return 0


def _overridden(config: Any, args: argparse.Namespace) -> Any:
    """The config with the command line's --output-dir, --model-output, --executor and
    --address applied."""
    executor = getattr(args, "executor", None)
    address = getattr(args, "address", None)
    if executor or address:
        spec = config.executor
        if executor and executor != spec.name:  # another executor: the config's options
            spec = spec.model_copy(update={"name": executor, "options": {}})  # were for its own
        if address:
            spec = spec.model_copy(update={"options": {**spec.options, "address": address}})
        config = config.model_copy(update={"executor": spec})
    if args.output_dir:
        config = config.model_copy(update={"output_dir": Path(args.output_dir)})
    if args.model_output is not None:
        value: str | int = args.model_output
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"output": value})}
        )
    return config


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from esegeta_core.report.html import REPORT_NAME, report_from_run, write_html_report

    data = report_from_run(Path(args.run_dir), title=args.title)
    path = write_html_report(data, Path(args.output or Path(args.run_dir) / REPORT_NAME))
    failed = sum(1 for m in data.maps if not m.ok)
    out.write(f"wrote {path} ({len(data.inputs)} inputs, {len(data.maps)} jobs, {failed} failed)\n")
    return 0


def cmd_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    from esegeta_core.config import load_config
    from esegeta_core.evaluation.runner import evaluate_config, write_evaluation_report

    config = _overridden(load_config(args.config), args)
    base = Path(args.config).resolve().parent
    board = evaluate_config(config, base)
    report = write_evaluation_report(config, base, board)
    out.write(format_leaderboard(board.rows(), [c.name for c in board.columns]))
    folder = config.run_dir(base) / "evaluation"
    out.write(f"\nleaderboard: {folder / 'leaderboard.csv'} (and .json); report: {report}\n")
    return 0


def format_leaderboard(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The leaderboard as a plain-text table (3 significant digits)."""
    shown = ["model", "method", *columns, *(["sanity"] if rows and "sanity" in rows[0] else [])]
    shown = [c for c in shown if c != "model" or len({r["model"] for r in rows}) > 1]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:.3g}"
        return str(value)

    table = [shown] + [[cell(r.get(c, "")) for c in shown] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(shown))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from esegeta_core.demo import run_demo

    path = run_demo(Path(args.output_dir), quick=args.quick, progress=not args.no_progress)
    out.write(f"esegeta demo: report written to {path}\n")
    return 0


def cmd_convert(args: argparse.Namespace, out: TextIO) -> int:
    from esegeta_core.legacy_config import write_converted

    path, warnings = write_converted(
        Path(args.old), Path(args.output) if args.output else None, force=args.force
    )
    for warning in warnings:
        sys.stderr.write(f"warning: {warning}\n")
    out.write(f"wrote {path} ({len(warnings)} warnings)\n")
    return 0


class CommandParser:
    """The ``esegeta`` parser and the parser of each sub-command, by name: the core keeps
    the names itself (core commands first, then the plugins'), so it needs no argparse
    internals to tell them apart."""

    def __init__(self) -> None:
        self.parser = argparse.ArgumentParser(
            prog="esegeta", description="Interpretability methods for PyTorch image models."
        )
        self.parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
        self._sub = self.parser.add_subparsers(dest="command", required=True)
        self.parsers: dict[str, argparse.ArgumentParser] = {}

    def add(self, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        """Add the sub-command ``name`` and return its parser."""
        self.parsers[name] = self._sub.add_parser(name, help=help, description=description)
        return self.parsers[name]

    def parse(self, argv: list[str], command: str | None = None) -> argparse.Namespace:
        """``argv`` parsed (argparse exits on a mistake); arguments nobody reads are
        reported by the parser of ``command`` when given (plugin commands, as their
        own parser did), else by the ``esegeta`` parser."""
        args, extra = self.parser.parse_known_args(argv)
        if extra:
            where = self.parsers[command] if command else self.parser
            where.error(f"unrecognized arguments: {' '.join(extra)}")
        return args


def build_commands() -> CommandParser:
    """The ``esegeta`` parser with the core commands."""
    commands = CommandParser()
    methods = commands.add("methods", help="list installed methods, or show one method")
    methods.add_argument("name", nargs="?", help="a method name: show its parameters")
    methods.add_argument("--plugin", help="only methods of this plugin")
    methods.add_argument("--family", help="only methods of this family")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.add_argument("--markdown", action="store_true", help="a Markdown table (for docs)")
    methods.set_defaults(func=cmd_methods)
    schema = commands.add("schema", help="print the JSON Schema of run configs")
    schema.set_defaults(func=cmd_schema)
    validate = commands.add("validate", help="check a run config without running it")
    validate.add_argument("config", help="YAML or JSON run config")
    validate.add_argument(
        "--plan",
        action="store_true",
        help="also check files, the model factory (not called), devices and output_dir, "
        "read the inputs and count the jobs",
    )
    validate.set_defaults(func=cmd_validate)
    run = commands.add("run", help="run a config: every input x method x target")
    run.add_argument("config", help="YAML or JSON run config")
    run.add_argument("--output-dir", help="override output_dir")
    run.add_argument(
        "--model-output",
        help="which part of the model's output holds the logits (a dict key, attribute or "
        "tuple index); overrides model.output",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="run even though the run folder holds a run of a different config (changed "
        "jobs are recomputed; the old config.json is kept as config.previous.json)",
    )
    run.add_argument(
        "--executor",
        help="where the jobs run: local (worker processes here, the default) or an "
        "installed executor such as ray (esegeta-ray); overrides the config's executor",
    )
    run.add_argument(
        "--address",
        help="the cluster to connect to, for executors that take one (ray: 'auto', "
        "'HOST:PORT' or 'ray://HOST:10001'); sets executor.options.address",
    )
    run.set_defaults(func=cmd_run)
    executors = commands.add("executors", help="list the executors `esegeta run` can use")
    executors.set_defaults(func=cmd_executors)
    report = commands.add("report", help="write a run folder's self-contained HTML report")
    report.add_argument("run_dir", help="the run folder (output_dir/name)")
    report.add_argument("-o", "--output", help="where to write it (default: RUN_DIR/report.html)")
    report.add_argument("--title", help="the page title (default: the run's name)")
    report.set_defaults(func=cmd_report)
    evaluate = commands.add(
        "evaluate", help="score a config's methods with metrics: a leaderboard and a report"
    )
    evaluate.add_argument("config", help="YAML or JSON run config (its evaluation section)")
    evaluate.add_argument("--output-dir", help="override output_dir")
    evaluate.add_argument(
        "--model-output",
        help="which part of the model's output holds the logits; overrides model.output",
    )
    evaluate.set_defaults(func=cmd_evaluate)
    demo = commands.add(
        "demo", help="train tiny models, explain and evaluate them, write an HTML report"
    )
    demo.add_argument("--output-dir", default="esegeta-demo", help="where to write")
    demo.add_argument("--quick", action="store_true", help="fewer images and methods")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    convert = commands.add("convert-config", help="convert a TorchEsegeta JSON config")
    convert.add_argument("old", help="the TorchEsegeta JSON config")
    convert.add_argument("-o", "--output", help="where to write the YAML (default: beside)")
    convert.add_argument(
        "--force", action="store_true", help="replace an existing YAML (never the source)"
    )
    convert.set_defaults(func=cmd_convert)
    return commands


def add_plugin_commands(commands: CommandParser, name: str | None) -> PluginCommand | None:
    """Add every plugin command to ``commands`` (so ``esegeta --help`` lists them) and
    return the one named ``name`` with its options added (``None`` without a name).

    Only that command's ``add_arguments`` is called: the others are not loaded. Raises
    :class:`InvalidParamsError` for a name no plugin adds, :class:`PluginConflictError`
    for one that several plugins claim and :class:`PluginLoadError` when the command's
    options cannot be added."""
    from esegeta_core.plugin.commands import collect_commands

    table = collect_commands(reserved=commands.parsers)
    if name is not None:
        _require_command(name, list(commands.parsers), table)
    for found in table.commands.values():
        commands.add(found.command.name, found.command.help, found.command.description)
    if name is None:
        return None
    chosen = table.commands[name]
    try:
        chosen.command.add_arguments(commands.parsers[name])
    except Exception as exc:  # a broken plugin: say which, no traceback
        raise PluginLoadError(
            f"the command {name!r} ({chosen.source}) failed to load: "
            f"{type(exc).__name__}: {exc}. Reinstall the plugin that provides it."
        ) from exc
    return chosen


def _require_command(name: str, core: list[str], table: CommandTable) -> None:
    """Raise unless a plugin adds the command ``name``, naming the commands there are."""
    from esegeta_core.plugin.commands import HOOK

    if name in table.commands:
        return
    if name in table.unavailable:
        raise PluginConflictError(table.unavailable[name])
    raise InvalidParamsError(
        f"unknown command {name!r}."
        + did_you_mean(name, [*core, *table.commands])
        + f" Commands: {', '.join(core)}; from plugins: "
        + (", ".join(table.commands) or "none installed")
        + f" (plugins add commands through the hook {HOOK})."
    )


def _command_word(argv: list[str]) -> tuple[str | None, int]:
    """The sub-command's name (the first word that is no option; ``None`` when there is
    none) and how many ``-v`` come before it, read before any plugin is loaded."""
    index = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    options = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    options.add_argument("-v", "--verbose", action="count", default=0)
    try:
        verbose = int(options.parse_known_args(argv[:index])[0].verbose)
    except argparse.ArgumentError:  # such as --verbose=2: the esegeta parser reports it
        verbose = 0
    return (None if index is None else argv[index]), verbose


EXIT_ERROR = 2
"""Exit status of a command that failed with an esegeta error (bad config, input...)."""
EXIT_UNEXPECTED = 1
"""Exit status of a command that failed with any other exception (a bug: report it)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""


def guarded(
    command: str, verbose: int, call: Callable[[], Any], *, prefix: str | None = None
) -> int:
    """Run one command and turn what it raises into a message and an exit status.

    An :class:`EsegetaError` prints its message (exit :data:`EXIT_ERROR`); Ctrl-C says
    how to resume (:data:`EXIT_INTERRUPTED`); any other exception prints one line and
    shows its traceback only with ``-v`` (:data:`EXIT_UNEXPECTED`). ``prefix`` names the
    command in esegeta error messages (plugin commands)."""
    try:
        return int(call())
    except KeyboardInterrupt:
        sys.stderr.write(f"esegeta {command}: interrupted; run again to resume\n")
        return EXIT_INTERRUPTED
    except EsegetaError as exc:
        sys.stderr.write(f"esegeta{' ' + prefix if prefix else ''}: error: {exc}\n")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback dump
        if verbose:
            traceback.print_exc(file=sys.stderr)
        first = (str(exc).strip().splitlines() or [""])[0]
        sys.stderr.write(
            f"esegeta {command}: unexpected error: {type(exc).__name__}: {first}\n"
            + ("" if verbose else f"run with -v for the traceback: esegeta -v {command} ...\n")
        )
        return EXIT_UNEXPECTED


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``esegeta`` command; returns the exit status.

    ``esegeta NAME ...`` with a NAME that is not a core command runs the command a
    plugin adds as ``NAME`` through the hook ``esegeta_register_commands`` (it writes
    to the real stdout, not ``out``); plugins are loaded only then, and for
    ``esegeta --help``. Exit status: 0 success, 1 (:data:`EXIT_UNEXPECTED`) an
    unexpected error or failed jobs (``run``), 2 (:data:`EXIT_ERROR`) an esegeta error
    or bad arguments, 130 (:data:`EXIT_INTERRUPTED`) Ctrl-C; never a traceback without -v.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    name, verbose = _command_word(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s %(name)s: %(message)s"
    )
    commands = build_commands()
    try:
        plugin = None if name in commands.parsers else add_plugin_commands(commands, name)
    except EsegetaError as exc:
        sys.stderr.write(f"esegeta: error: {exc}\n")
        return EXIT_ERROR
    if plugin is None:
        args = commands.parse(argv)
        return guarded(args.command, args.verbose, lambda: args.func(args, out or sys.stdout))
    command = plugin.command
    args = commands.parse(argv, command.name)
    return guarded(command.name, verbose, lambda: command.run(args) or 0, prefix=command.name)


if __name__ == "__main__":
    raise SystemExit(main())
