"""``esegeta xml ...``: train an ExplainerClassifier from a config file.

``esegeta xml train CONFIG`` trains (or resumes) as the YAML/JSON config says;
``esegeta xml schema`` prints the config's JSON Schema. The core dispatches
``esegeta xml ...`` here through the entry-point group ``esegeta.cli``; the
``esegeta-xml`` console script does the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from esegeta_core.errors import EsegetaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esegeta xml",
        description="xML: train a classifier jointly with its explainer "
        "(https://doi.org/10.1016/j.patrec.2020.04.004).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) from a YAML/JSON config")
    train.add_argument("config", help="the training config (see `esegeta xml schema`)")
    train.add_argument("--output-dir", help="override output_dir")
    train.add_argument("--device", help="override device ('cpu', 'cuda:0', ...)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("schema", help="print the JSON Schema of training configs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``esegeta xml`` with ``argv`` (without the ``xml``); returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
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
    except EsegetaError as exc:
        sys.stderr.write(f"esegeta xml: error: {exc}\n")
        return 2
    last = result.metrics[-1] if result.metrics else {}
    sys.stdout.write(
        f"{result.output_dir / 'model.pt'}: trained; "
        f"val accuracy {last.get('val_accuracy', float('nan')):.3f}, "
        f"val loss {last.get('val_loss', float('nan')):.4f}; metrics in "
        f"{result.output_dir / 'metrics.csv'}\n"
    )
    return 0


def console() -> None:
    """The ``esegeta-xml`` console script."""
    raise SystemExit(main())
