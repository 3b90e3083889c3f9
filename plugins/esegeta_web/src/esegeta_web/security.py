"""What keeps ``esegeta serve`` safe: it can launch code, so it must refuse strangers.

* **Token.** A server bound to anything but loopback needs a token (as Jupyter does):
  ``?token=T`` once (it is then kept in an HTTP-only cookie) or ``Authorization: Bearer T``.
  A loopback server without a token only answers requests whose ``Host`` is a loopback
  name, so a web page that rebinds its DNS name to 127.0.0.1 cannot drive it.
* **CSRF.** Every POST carries the session's CSRF token (a cookie) back in the form field
  ``csrf_token`` or the header ``X-CSRF-Token``; both are compared in constant time.
* **Body size.** Request bodies (uploads, configs) over the limit are refused with 413
  before they are read into memory or onto disk.
* **Paths.** :func:`confine` resolves every user path inside the workspace and refuses
  ``..``, absolute paths and symlinks that lead out of it.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esegeta_core.errors import InvalidInputError, InvalidParamsError
from esegeta_core.files import inside

TOKEN_COOKIE = "esegeta_token"
CSRF_COOKIE = "esegeta_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
DEFAULT_MAX_UPLOAD = 512 * 1024**2
"""Default limit of one request body (an upload or a config): 512 MiB."""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "testserver")
"""Host names a token-less loopback server answers (``testserver``: Starlette's
TestClient)."""


class PathOutsideWorkspaceError(InvalidParamsError):
    """A user-given path leaves the workspace (``..``, absolute, or a symlink out)."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh random token (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)


def confine(workspace: Path, user_path: str | Path, *, what: str = "path") -> Path:
    """``user_path`` resolved inside ``workspace`` (itself resolved).

    Refuses absolute paths, any ``..`` part and paths that resolve (through symlinks)
    outside the workspace, with :class:`PathOutsideWorkspaceError` naming the path."""
    text = str(user_path)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    drive = len(text) > 1 and text[1] == ":" and text[0].isalpha()  # C:\... on Windows
    if not text:
        raise PathOutsideWorkspaceError(f"{what} is empty; give a path inside the workspace.")
    if text.startswith(("/", "\\")) or Path(text).is_absolute() or drive:
        raise PathOutsideWorkspaceError(
            f"{what} {text!r} is absolute; give a path relative to the workspace {workspace}."
        )
    if ".." in parts:
        raise PathOutsideWorkspaceError(
            f"{what} {text!r} contains '..'; give a path inside the workspace {workspace}."
        )
    try:
        return inside(workspace, text, what)
    except InvalidInputError as exc:
        raise PathOutsideWorkspaceError(
            f"{what} {text!r} leads outside the workspace {workspace} (through a symlink); "
            "copy the file into the workspace instead."
        ) from exc


class SecurityMiddleware:
    """Token, Host, CSRF-cookie and body-size checks in front of the whole app (static
    files included). The CSRF comparison itself happens in :func:`require_csrf`, which
    can read form fields; this middleware makes sure every session has the cookie and
    puts its value in ``scope["state"]["csrf"]`` for templates."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, host: str, max_body: int = DEFAULT_MAX_UPLOAD
    ) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = None if token else {*LOOPBACK_NAMES, host}
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        query_token = request.query_params.get("token")
        if self.token and query_token is not None and request.method == "GET":
            # keep the token in a cookie and drop it from the address bar and history
            url = request.url.remove_query_params("token")
            redirect = RedirectResponse(str(url.path) + (f"?{url.query}" if url.query else ""))
            redirect.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="lax")
            await redirect(scope, receive, send)
            return
        csrf = request.cookies.get(CSRF_COOKIE)
        fresh = None if csrf else secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf"] = csrf or fresh
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._too_large()(scope, receive, send)
            return
        received = 0
        started = exceeded = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    exceeded = True
                    raise _BodyTooLargeError
            return message

        async def send_with_cookie(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a cut body (often a 400): the 413 replaces it
            if message["type"] == "http.response.start":
                started = True
                if fresh:
                    cookie = f"{CSRF_COOKIE}={fresh}; Path=/; SameSite=strict".encode()
                    message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_cookie)
        except _BodyTooLargeError:
            if started:
                raise
        if exceeded and not started:
            await self._too_large()(scope, receive, send)

    def _too_large(self) -> Response:
        return PlainTextResponse(
            f"Request body over the limit of {self.max_body:,} bytes. Upload a smaller "
            "file, or restart `esegeta serve` with a larger --max-upload.",
            status_code=413,
        )

    def _refusal(self, request: Request) -> Response | None:
        """A 401/400 response when the request may not reach the app, else None."""
        if self.token is None:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
            if self.allowed_hosts is not None and host not in self.allowed_hosts:
                return PlainTextResponse(
                    f"Host {host!r} refused: this token-less server answers only loopback "
                    "names (localhost, 127.0.0.1). Open it as http://127.0.0.1:PORT/.",
                    status_code=400,
                )
            return None
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        return PlainTextResponse(
            "This esegeta server needs its token: open the address `esegeta serve` printed "
            "(…/?token=…), or send the header 'Authorization: Bearer TOKEN'.",
            status_code=401,
        )


class _BodyTooLargeError(Exception):
    """Raised inside the app's receive() once the body passes the limit."""


class CsrfError(InvalidParamsError):
    """A POST without the session's CSRF token (a forged cross-site request, or an
    expired page)."""


async def require_csrf(request: Request) -> None:
    """FastAPI dependency: a POST must carry the CSRF cookie's value back, in the form
    field ``csrf_token`` or the ``X-CSRF-Token`` header."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = request.cookies.get(CSRF_COOKIE) or ""
    given = request.headers.get(CSRF_HEADER, "")
    if not given:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form: Any = await request.form()
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else ""
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfError(
            "POST refused: the CSRF token is missing or wrong. Reload the page and submit "
            "again (scripts: send the esegeta_csrf cookie's value as 'X-CSRF-Token')."
        )
