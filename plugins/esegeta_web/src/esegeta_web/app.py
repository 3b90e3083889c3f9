"""The FastAPI application of ``esegeta serve``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from esegeta_core.errors import EsegetaError
from esegeta_web.fits import ModelFits
from esegeta_web.jobs import JobManager
from esegeta_web.models import DeclaredModel, ModelNotAllowedError
from esegeta_web.security import (
    DEFAULT_MAX_UPLOAD,
    CsrfError,
    PathOutsideWorkspaceError,
    SecurityMiddleware,
    require_csrf,
)

PACKAGE = Path(__file__).parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"


def create_app(
    workspace: Path,
    *,
    models: dict[str, DeclaredModel] | None = None,
    token: str | None = None,
    host: str = "127.0.0.1",
    max_upload: int = DEFAULT_MAX_UPLOAD,
) -> FastAPI:
    """The web app over ``workspace`` (its run folders, uploads and configs).

    ``models`` are the only models users may run (see :mod:`esegeta_web.models`);
    ``token``, when given, is required of every request; ``host`` is the address the
    server binds (a token-less server answers only loopback host names); request bodies
    over ``max_upload`` bytes are refused."""
    from esegeta_web.runs_pages import router

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.jobs.shutdown()  # the server exits: stop the runs it started, resumable

    app = FastAPI(
        title="esegeta",
        dependencies=[Depends(require_csrf)],
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.workspace = Path(workspace).resolve()
    app.state.models = dict(models or {})
    app.state.jobs = JobManager(app.state.workspace)
    app.state.fits = ModelFits()  # which methods fit each declared model, built once
    app.state.max_upload = max_upload
    # every template escapes what it shows (run names, titles, file names, errors)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    templates = Jinja2Templates(env=env)
    assets = _viewer_assets()
    templates.env.globals["viewer_js"] = (
        "esegeta-viewer.js" in assets or (STATIC / "esegeta-viewer.js").is_file()
    )
    templates.env.globals["niivue_js"] = "niivue.umd.js" in assets
    app.state.templates = templates
    app.include_router(router)
    from esegeta_web import evaluate_pages, quick

    app.include_router(quick.router)  # /quick
    app.include_router(evaluate_pages.router)  # /evaluate/RUN
    for name in assets:  # the viewers' scripts, served from the core's package data
        app.add_api_route(f"/static/{name}", _asset_route(name), methods=["GET"])
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(SecurityMiddleware, token=token, host=host, max_body=max_upload)

    @app.exception_handler(EsegetaError)
    async def _esegeta_error(request: Request, exc: EsegetaError) -> Any:
        status = 400
        if isinstance(exc, CsrfError | PathOutsideWorkspaceError | ModelNotAllowedError):
            status = 403
        elif isinstance(exc, LookupError):
            status = 404
        elif isinstance(exc, RuntimeError):
            status = 409
        from esegeta_core.errors import RunConflictError

        if isinstance(exc, RunConflictError):
            status = 409
        if "text/html" in request.headers.get("accept", ""):
            return templates.TemplateResponse(
                request, "error.html", {"message": str(exc)}, status_code=status
            )
        return PlainTextResponse(str(exc), status_code=status)

    return app


def _viewer_assets() -> list[str]:
    """Names of the viewer scripts esegeta_web.viewers serves (none when it is missing:
    the results page then says so)."""
    try:
        from esegeta_web.viewers import STATIC_ASSETS
    except ImportError:
        return []
    return list(STATIC_ASSETS)


def _asset_route(name: str) -> Any:
    async def asset() -> Response:
        from esegeta_web.viewers import static_asset

        content, media = static_asset(name)
        return Response(content, media_type=media, headers={"Cache-Control": "max-age=3600"})

    asset.__name__ = f"asset_{name.replace('.', '_').replace('-', '_')}"
    return asset
