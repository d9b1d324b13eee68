"""The FastAPI application of a finished run: the study's endpoints, ``/health``, ``/info`` and the page.

The run folder says which study it is (its ``config.yaml``); each study module
adds its own endpoints (:mod:`cnnlab.serve.faces`, :mod:`cnnlab.serve.cifar`).
Shared here: the guard that checks the bearer token and the request size
before anything is parsed, and the error handlers that answer every problem
with a 4xx JSON ``{"error": "..."}`` instead of a traceback.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
from importlib import resources
from typing import Any, Sequence
from urllib.parse import parse_qs, quote, unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnlab.data.align import check_align
from cnnlab.errors import CnnlabError, param
from cnnlab.serve.cifar import CifarService, add_cifar_routes
from cnnlab.serve.faces import FaceService, add_face_routes, check_gallery
from cnnlab.serve.service import ENDPOINTS, MB, STUDY_NAMES, Service, finite, run_study, token_problem
from cnnlab.serve.uploads import MAX_IMAGE_PIXELS, UploadError

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "cnnlab_token"
_PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
               "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
               "/static/style.css": ("style.css", "text/css; charset=utf-8")}
# The page loads nothing from elsewhere; images it shows are data: URLs or this service's thumbnails.
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                            "img-src 'self' data: blob:; connect-src 'self'; "
                                            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """``field 'a': Field required; ...``: each problem of a request FastAPI could not parse, by field."""
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query")]
        where = f"field '{'.'.join(loc)}'" if loc else "request body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            msg = "missing (send the request as multipart/form-data with this field)"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "malformed request"


def _add_error_handlers(app: FastAPI, study: str) -> None:
    serves = ", ".join(ENDPOINTS[study])

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and exc.detail == "Not Found":
            here = f"{request.method} {request.url.path}"
            other = next((s for s, eps in ENDPOINTS.items() if s != study and f"POST {request.url.path}" in eps), None)
            why = (f"{request.url.path} is for {STUDY_NAMES[other]}, and this is {STUDY_NAMES[study]}" if other
                   else f"no such endpoint: {here}")
            return _error(404, f"{why}; this service serves {serves}, GET /info, GET /health and the page at /")
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}; this service serves {serves}, "
                               "GET /info, GET /health", headers=getattr(exc, "headers", None))
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: logged with its traceback, never sent
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the service log has the details")


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit:,} bytes (--max-upload-mb for each image, "
                              f"at most the images an endpoint takes)")


class Guard:
    """Pure ASGI middleware in front of the app: the bearer token and the request size.

    With a token, every request but ``GET /health`` must carry it, as
    ``Authorization: Bearer T`` or as the cookie the page gets when it is
    opened once as ``/?token=T`` (a browser cannot add a header to a page it
    navigates to). A body over ``max_body`` bytes is refused from its
    ``Content-Length``, or while it streams in when it has none.
    """

    def __init__(self, app, token: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is not None and scope["path"] != "/health":
            given, from_query = self._given(scope)
            if given is None or not hmac.compare_digest(given, self.token):
                response = _error(401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN' "
                                       "(the --token or CNNLAB_SERVE_TOKEN the service was started with)",
                                  headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
            if from_query:  # the page opened as /?token=T: keep it in a cookie, drop it from the address bar
                response = RedirectResponse("/", status_code=303)
                # URL-quoted, as _given reads it back: a cookie value cannot hold spaces, ';' or ',' as they are.
                response.set_cookie(TOKEN_COOKIE, quote(self.token, safe=""), httponly=True, samesite="strict")
                return await response(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _error(413, _BodyTooLarge(self.max_body).detail)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge(self.max_body)
            return message

        return await self.app(scope, counted, send)

    def _given(self, scope) -> tuple[bytes | None, bool]:
        headers = dict(scope.get("headers") or ())
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            return auth[7:].strip(), False
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == TOKEN_COOKIE.encode():
                return unquote_to_bytes(value), False
        if scope["path"] == "/" and scope["method"] == "GET":
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            if values:
                return values[0].encode(), True
        return None, False


def _page(path: str) -> Response:
    name, media = _PAGE_FILES[path]
    body = resources.files("cnnlab.serve").joinpath("static", name).read_bytes()
    return Response(body, media_type=media, headers={**_PAGE_HEADERS, "Cache-Control": "no-cache"})


def create_app(run: str | os.PathLike, gallery: str | os.PathLike | None = None, token: str | None = None,
               max_upload_bytes: int = 10 * MB, *, device: str = "auto", cors_origins: Sequence[str] = (),
               max_images: int = 16, max_batch: int = 64, batch_wait_ms: float = 5.0,
               max_image_pixels: int = MAX_IMAGE_PIXELS, allow_unfinished: bool = False,
               align: str | None = None) -> FastAPI:
    """The FastAPI app serving the finished run at ``run`` (a face run or a CIFAR run; the folder says which).

    The network is loaded once; concurrent requests share its calls (see
    :mod:`cnnlab.serve.batching`: up to ``max_batch`` images, waiting at most
    ``batch_wait_ms`` for requests already arriving). ``gallery`` (face runs
    only) is the folder of people ``/identify`` searches. With ``token`` every
    request but ``/health`` needs it as a bearer token. Uploads are limited to
    ``max_upload_bytes`` each and ``max_image_pixels`` decoded; ``/predict``
    takes at most ``max_images`` images. ``cors_origins``: origins allowed to
    call the API from their pages (none by default). A run that has not
    finished training is refused unless ``allow_unfinished``. ``align`` (face
    runs only: auto, detect, center): how faces are found in the images sent,
    when not as the run was trained.
    """
    if max_upload_bytes < 1:
        raise CnnlabError(f"max_upload_bytes must be at least 1, got {max_upload_bytes}")
    if max_images < 1:
        raise CnnlabError(f"max_images must be at least 1, got {max_images}")
    if max_batch < 1:
        raise CnnlabError(f"max_batch must be at least 1, got {max_batch}")
    if not 0 <= batch_wait_ms < math.inf:
        raise CnnlabError(f"batch_wait_ms must be a number of milliseconds, 0 or more, got {batch_wait_ms}")
    if token and token_problem(token):
        raise CnnlabError(f"the token {token_problem(token)}")
    study = run_study(run)
    # What costs nothing is checked before the network is loaded.
    if study == "faces" and gallery is not None:
        check_gallery(gallery)
    if study == "faces" and align is not None:
        check_align(align)
    limits = dict(max_upload_bytes=max_upload_bytes, max_images=max_images, max_image_pixels=max_image_pixels)
    batching = dict(device=device, max_batch=max_batch, max_wait=batch_wait_ms / 1000)
    if study == "faces":
        service: Service = FaceService(run, gallery, allow_unfinished=allow_unfinished, align=align, **limits,
                                       **batching)
        add_routes = add_face_routes
    else:
        if gallery is not None:
            raise CnnlabError(f"{run} is a CIFAR run; a gallery is for face runs (leave out {param('gallery')})")
        if align is not None:
            raise CnnlabError(f"{run} is a CIFAR run; align is for face runs (leave out {param('align')})")
        service = CifarService(run, allow_unfinished=allow_unfinished, **limits, **batching)
        add_routes = add_cifar_routes

    app = FastAPI(title=f"cnnlab serve: {service.run.path.name}", redoc_url=None,
                  description=f"{STUDY_NAMES[study].capitalize()} of cnnlab, served: " + ", ".join(ENDPOINTS[study]),
                  lifespan=_lifespan(service))
    app.state.service = service
    _add_error_handlers(app, study)
    _add_common_routes(app, service)
    add_routes(app, service)
    app.add_middleware(Guard, token=token or None, max_body=max_upload_bytes * max(2, max_images) + MB)
    if cors_origins:  # outermost, so a browser's preflight is answered before the token is asked for
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"])
    return app


def _lifespan(service: Service):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    return lifespan


def _add_common_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health", summary="the service is up (no token needed)")
    def health() -> dict[str, Any]:
        return {"status": "ok", "study": service.study}

    @app.get("/info", summary="the run: study, model, threshold or classes, training summary")
    def info() -> dict[str, Any]:
        summary = service.run.read_summary()
        training = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}
        return {"study": service.study, "run": service.run.path.name, "endpoints": list(ENDPOINTS[service.study]),
                **service.info(), "training": finite(training),
                "limits": {"max_upload_bytes": service.max_upload_bytes, "max_images": service.max_images,
                           "max_image_pixels": service.max_image_pixels}}

    for path in _PAGE_FILES:
        app.add_api_route(path, _page_route(path), methods=["GET"], include_in_schema=False)


def _page_route(path: str):
    return lambda: _page(path)
