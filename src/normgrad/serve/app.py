"""The explorer's web app (Starlette): the page, its assets and a small JSON API over :class:`Explorer`.

==============================================  ==========================================================
route                                           answer
==============================================  ==========================================================
``GET /``, ``GET /static/{asset}``              the page and its script and style (a fixed set, from memory)
``GET /api/info``                               model, classes, methods, layers, ``--images`` names, limits
``POST /api/upload`` (the raw image bytes)      ``Explorer.open_upload``: a token, size, top-k predictions
``POST /api/open/{index}``                      the same for an image of ``--images`` (by number, not path)
``GET /api/photo/{token}``                      the photo at display size (JPEG)
``GET /api/listed/{index}``                     a small preview of an ``--images`` image (JPEG)
``POST /api/explain`` (JSON)                    ``Explorer.explain``: the maps at display size
``GET /api/result/{token}/{k}.{npy|png}``       map ``k`` at the photo's size: float32 .npy or overlay .png
==============================================  ==========================================================

Errors are JSON ``{"error": message}`` with a 4xx status (400 bad request,
404 unknown, 405, 413 upload too large, 415 not an upload); anything
unexpected is a 500 with one line, never a traceback page (it goes to the
server's log).  Uploads are read in pieces and refused past
``max_upload_bytes``; ``allowed_hosts`` (``TrustedHostMiddleware``) stops DNS
rebinding when bound to a loopback address; a request that changes or
computes anything (every method but GET/HEAD) whose ``Origin`` is not the
server's own (scheme and Host) is refused with 403, so another site's form
or script cannot act through the user's browser; every answer carries a
strict Content-Security-Policy (only the page's own scripts, no inline
code).  An explanation whose client disconnects is cancelled (503 to
nobody), as is running work when the server stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import unquote

from normgrad.errors import NormGradError
from normgrad.serve.explorer import Cancelled, Explorer, NotFound

ASSETS = {"explorer.js": "text/javascript; charset=utf-8", "explorer.css": "text/css; charset=utf-8"}
HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                                 b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]  # fmt: skip
DEFAULT_MAX_UPLOAD = 32 << 20
DISCONNECT_POLL_S = 0.1  # how often a running explanation checks that its client is still there
log = logging.getLogger("normgrad.serve")


class ClientError(Exception):
    """A request the explorer refuses: ``status`` and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def create_app(explorer: Explorer, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD, allowed_hosts: Sequence[str] | None = None) -> Any:
    """The Starlette app serving ``explorer``; ``allowed_hosts``: Host headers accepted (``None``: any)."""
    try:
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
        from starlette.middleware import Middleware
        from starlette.middleware.trustedhost import TrustedHostMiddleware
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route
    except ImportError as error:
        raise NormGradError("normgrad serve needs the serve extra: pip install 'normgrad[serve]'") from error

    page = resources.files("normgrad.serve").joinpath("static", "explorer.html").read_bytes()
    assets = {name: resources.files("normgrad.serve").joinpath("static", name).read_bytes() for name in ASSETS}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in assets:
            raise ClientError(404, f"no asset {name!r}")
        return Response(assets[name], media_type=ASSETS[name])

    async def info(request: Request) -> Response:
        return JSONResponse(explorer.info())

    async def upload(request: Request) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/octet-stream" and not kind.startswith("image/"):
            raise ClientError(415, f"send the image file itself as the body (image/* or application/octet-stream), not {kind or 'nothing'}")
        data = await _body(request, max_upload_bytes)
        name = unquote(request.headers.get("x-file-name", "upload"))[:200]
        return JSONResponse(await run_in_threadpool(explorer.open_upload, data, name))

    async def open_listed(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(explorer.open_listed, request.path_params["index"]))

    async def photo(request: Request) -> Response:
        return Response(explorer.display(request.path_params["token"]), media_type="image/jpeg")

    async def listed(request: Request) -> Response:
        return Response(await run_in_threadpool(explorer.listed_display, request.path_params["index"]), media_type="image/jpeg")

    async def explain(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ClientError(415, "send the settings as JSON (Content-Type: application/json)")
        raw = await _body(request, 1 << 20)
        try:
            settings = json.loads(raw)
        except ValueError as error:
            raise ClientError(400, f"the request is not valid JSON: {error}") from None
        cancel = threading.Event()
        work = asyncio.ensure_future(run_in_threadpool(explorer.explain, settings, cancel))
        try:
            while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
                if await request.is_disconnected():
                    cancel.set()  # the thread stops at the model's next module; its answer goes nowhere
        finally:
            if not work.done():  # this handler itself was cancelled (the server stops)
                cancel.set()
        return JSONResponse(work.result())

    async def download(request: Request) -> Response:
        token, index, kind = request.path_params["token"], request.path_params["index"], request.path_params["kind"]
        data, filename, media = await run_in_threadpool(explorer.download, token, index, kind)
        return Response(data, media_type=media, headers={"content-disposition": _attachment(filename)})

    async def refused(request: Request, error: Exception) -> Response:
        if isinstance(error, ClientError):
            return JSONResponse({"error": error.message}, status_code=error.status)
        if isinstance(error, Cancelled):
            return JSONResponse({"error": str(error)}, status_code=503)
        if isinstance(error, NotFound):
            return JSONResponse({"error": str(error)}, status_code=404)
        if isinstance(error, NormGradError):
            return JSONResponse({"error": str(error)}, status_code=400)
        if isinstance(error, HTTPException):
            return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)
        log.exception("normgrad serve: internal error on %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse({"error": f"internal error ({type(error).__name__}); the server's log has the details"}, status_code=500)

    routes = [
        Route("/", index),
        Route("/static/{asset}", asset),
        Route("/api/info", info),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/open/{index:int}", open_listed, methods=["POST"]),
        Route("/api/photo/{token}", photo),
        Route("/api/listed/{index:int}", listed),
        Route("/api/explain", explain, methods=["POST"]),
        Route("/api/result/{token}/{index:int}.{kind}", download),
    ]
    middleware = [Middleware(_SecurityHeaders), Middleware(_SameOrigin)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    handlers = {ClientError: refused, NormGradError: refused, HTTPException: refused, Cancelled: refused, Exception: refused}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


async def _body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (also when Content-Length says so)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"the upload is {int(declared) / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB")
    pieces, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise ClientError(413, f"the upload is larger than the limit of {limit / 2**20:.1f} MiB")
        pieces.append(piece)
    return b"".join(pieces)


def return_large_buffers_to_the_system() -> bool:
    """Make glibc serve every allocation ≥ 1 MiB by its own mmap, given back to the system when freed (process-wide).

    Decoding an 8192² upload takes 200 MB for a moment; with glibc's default (a
    threshold that rises after each such free) those buffers stay in the
    threads' heaps: the server's RSS grew by 0.5 GB per upload up to 2.7 GB
    (six 8192² uploads, 4 threads) although its caches held 2 MB; with this,
    it stays within 20 MB of where it started.  ``False`` where there is no glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 20))
    except (OSError, AttributeError):
        return False


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _attachment(filename: str) -> str:
    from urllib.parse import quote

    plain = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in filename) or "map"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


class _SecurityHeaders:
    """Adds the security headers to every HTTP answer (a plain ASGI middleware)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class _SameOrigin:
    """Refuse (403) a request other than GET/HEAD whose ``Origin`` header is not the server's own ``scheme://host``.

    Browsers send ``Origin`` with every cross-origin POST (forms included);
    clients that send none (curl, scripts) are not browsers acting for another site.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        origin = headers.get("origin")
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        if origin is not None and origin.lower().rstrip("/") != own:
            from starlette.responses import JSONResponse

            message = f"refused: this request comes from {origin}, not from the explorer's own page ({own})"
            await JSONResponse({"error": message}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)
