"""``esegeta serve``: start the web app (the command this plugin adds to ``esegeta``).

Importing this module is cheap (``esegeta --help`` lists the command through it): the
web server and the app load only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from esegeta_core.command import Command
from esegeta_core.errors import InvalidParamsError

if TYPE_CHECKING:
    from esegeta_web.models import DeclaredModel

DESCRIPTION = (
    "A local web app that launches esegeta runs, follows them live and shows their maps. "
    "It can run code: it binds to 127.0.0.1 unless told otherwise, and any other host "
    "needs a token."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``esegeta serve`` to ``p``."""
    from esegeta_web.security import DEFAULT_MAX_UPLOAD

    p.add_argument("--workspace", default=".", help="folder of runs, inputs and uploads")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument(
        "--models", help="YAML/JSON file of the models users may run (name -> factory, ...)"
    )
    p.add_argument(
        "--token", help="access token (generated when binding a non-loopback host without one)"
    )
    p.add_argument(
        "--max-upload",
        type=int,
        default=DEFAULT_MAX_UPLOAD,
        help=f"largest request body (upload) in bytes (default {DEFAULT_MAX_UPLOAD:,}: 512 MiB)",
    )


def parser() -> argparse.ArgumentParser:
    """The options of ``esegeta serve``."""
    p = argparse.ArgumentParser(prog="esegeta serve", description=DESCRIPTION)
    add_arguments(p)
    return p


@dataclass(frozen=True)
class Settings:
    """What ``esegeta serve`` was asked to serve, checked."""

    workspace: Path
    host: str
    port: int
    token: str | None
    models: dict[str, DeclaredModel]
    max_upload: int


def settings(argv: list[str]) -> Settings:
    """The app's settings from the command line (see :func:`checked_settings`)."""
    return checked_settings(parser().parse_args(argv))


def checked_settings(args: argparse.Namespace) -> Settings:
    """The app's settings from the parsed options: workspace checked, token generated
    when a non-loopback host has none."""
    from esegeta_web.models import load_models
    from esegeta_web.security import is_loopback, new_token

    workspace = Path(args.workspace).resolve()
    if not workspace.is_dir():
        raise InvalidParamsError(
            f"--workspace {args.workspace}: no such folder; create it or choose another."
        )
    if args.max_upload <= 0:
        raise InvalidParamsError(f"--max-upload {args.max_upload}: give a positive byte count.")
    token = args.token
    if token is None and not is_loopback(args.host):
        token = new_token()
    models = load_models(Path(args.models) if args.models else None)
    return Settings(workspace, args.host, args.port, token, models, args.max_upload)


def run(args: argparse.Namespace) -> int:
    """Run the server with the parsed options until Ctrl-C; returns the exit status."""
    import uvicorn

    from esegeta_web.app import create_app

    s = checked_settings(args)
    app = create_app(
        s.workspace, models=s.models, token=s.token, host=s.host, max_upload=s.max_upload
    )
    shown = f"[{s.host}]" if ":" in s.host else s.host
    url = f"http://{shown}:{s.port}/" + (f"?token={s.token}" if s.token else "")
    sys.stderr.write(
        f"esegeta serve: workspace {s.workspace}, {len(s.models)} models allowed\n  open {url}\n"
    )
    uvicorn.run(app, host=s.host, port=s.port, log_level="warning")
    return 0


def main(argv: list[str]) -> int:
    """Run the server until Ctrl-C; returns the exit status."""
    return run(parser().parse_args(argv))


COMMAND = Command(
    name="serve",
    help="start the web app: launch runs, follow them live, see their maps",
    add_arguments=add_arguments,
    run=run,
    description=DESCRIPTION,
)
"""``esegeta serve``, as the hook ``esegeta_register_commands`` of the plugin returns it."""
