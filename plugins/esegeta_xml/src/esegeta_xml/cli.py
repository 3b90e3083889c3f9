"""``esegeta xml ...``: train an ExplainerClassifier from a config file.

``esegeta xml train CONFIG`` trains (or resumes) as the YAML/JSON config says;
``esegeta xml schema`` prints the config's JSON Schema. The plugin adds ``esegeta xml``
to the core's command through the hook ``esegeta_register_commands`` (:data:`COMMAND`);
the ``esegeta-xml`` console script runs the same. Importing this module is cheap: the
training code loads when a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from esegeta_core.command import Command
from esegeta_core.errors import EsegetaError

DESCRIPTION = (
    "xML: train a classifier jointly with its explainer "
    "(https://doi.org/10.1016/j.patrec.2020.04.004)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sub-commands of ``esegeta xml`` (``train``, ``schema``) to ``parser``."""
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) from a YAML/JSON config")
    train.add_argument("config", help="the training config (see `esegeta xml schema`)")
    train.add_argument("--output-dir", help="override output_dir")
    train.add_argument("--device", help="override device ('cpu', 'cuda:0', ...)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("schema", help="print the JSON Schema of training configs")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``esegeta xml`` on its own (the ``esegeta-xml`` console script)."""
    parser = argparse.ArgumentParser(prog="esegeta xml", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``esegeta xml`` with the parsed ``args``; returns the exit status and raises
    :class:`~esegeta_core.errors.EsegetaError` for a bad config."""
    if args.command == "schema":
        from esegeta_xml.config import train_config_schema

        sys.stdout.write(json.dumps(train_config_schema(), indent=2) + "\n")
        return 0
    from esegeta_xml.config import load_train_config
    from esegeta_xml.training import train

    config = load_train_config(args.config)
    update: dict[str, object] = {}
    if args.output_dir:
        update["output_dir"] = Path(args.output_dir).resolve()
    if args.device:
        update["device"] = args.device
    if args.no_progress:
        update["progress"] = False
    if update:
        config = config.model_copy(update=update)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("esegeta_xml").setLevel(logging.INFO)
    result = train(config)
    last = result.metrics[-1] if result.metrics else {}
    sys.stdout.write(
        f"{result.output_dir / 'model.pt'}: trained; "
        f"val accuracy {last.get('val_accuracy', float('nan')):.3f}, "
        f"val loss {last.get('val_loss', float('nan')):.4f}; metrics in "
        f"{result.output_dir / 'metrics.csv'}\n"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``esegeta xml`` with ``argv`` (without the ``xml``); returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except EsegetaError as exc:
        sys.stderr.write(f"esegeta xml: error: {exc}\n")
        return 2


def console() -> None:
    """The ``esegeta-xml`` console script."""
    raise SystemExit(main())


COMMAND = Command(
    name="xml",
    help="train a classifier jointly with its xML explainer (esegeta xml train CONFIG)",
    add_arguments=add_arguments,
    run=run,
    description=DESCRIPTION,
)
"""``esegeta xml``, as the hook ``esegeta_register_commands`` of the plugin returns it."""
