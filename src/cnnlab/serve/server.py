"""Running the app: the exposure rule, the listening socket, uvicorn."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import math
import os
import socket
import sys
from typing import Sequence

from cnnlab.errors import CnnlabError, param, shown_path
from cnnlab.serve.service import MB, MIN_NETWORK_TOKEN, run_study, token_problem

logger = logging.getLogger(__name__)

TOKEN_ENV = "CNNLAB_SERVE_TOKEN"
_EXTRA = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}
INSTALL_HINT = 'pip install "cnnlab[serve]" (in a checkout: pip install -e ".[serve]")'


def require_extra() -> None:
    """A :class:`CnnlabError` naming the missing packages and the pip command, unless all are installed."""
    missing = [pkg for module, pkg in _EXTRA.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise CnnlabError(f"cnnlab serve needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: {INSTALL_HINT}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost): no one else can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to require: ``token``, else $CNNLAB_SERVE_TOKEN; a :class:`CnnlabError` when ``host`` is not
    loopback and there is none or a weak one (under :data:`MIN_NETWORK_TOKEN` characters other than
    whitespace), since anyone who reaches that address could then use the run, and for a token no HTTP
    header can carry."""
    given = param("token") if token else TOKEN_ENV
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None:
        if not is_loopback(host):
            raise CnnlabError(f"{param('host')} {host} lets other machines connect, so the service needs a token: give "
                              f"{param('token')} TOKEN (or set {TOKEN_ENV}); clients then send 'Authorization: Bearer "
                              f"TOKEN'. Without a token, keep the default {param('host')} 127.0.0.1")
        return None
    problem = token_problem(token)
    if problem:
        raise CnnlabError(f"the token given by {given} {problem}; give one without")
    strength = len("".join(token.split()))
    if strength < MIN_NETWORK_TOKEN and not is_loopback(host):
        raise CnnlabError(f"{param('host')} {host} lets other machines connect, so the token given by {given} needs "
                          f"at least {MIN_NETWORK_TOKEN} characters other than whitespace, and it has {strength}: make "
                          "one with e.g. openssl rand -hex 16")
    return token


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it
    # every answer on a kept-alive connection waits about 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise CnnlabError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another {param('port')}, or "
                          f"{param('port')} 0 for any free one") from None
    sock.listen(2048)
    return sock


def check_options(port: int, max_upload_mb: float, max_images: int, max_batch: int, batch_wait_ms: float) -> None:
    """A :class:`CnnlabError` naming the first parameter whose value the service cannot take."""
    if not 0 <= port <= 65535:
        raise CnnlabError(f"{param('port')}: expected a port number from 0 to 65535 (0: any free one), got {port}")
    if not 0 < max_upload_mb < math.inf:
        raise CnnlabError(f"{param('max_upload_mb')}: expected a positive number of MiB, got {max_upload_mb}")
    for option, value in (("max_images", max_images), ("max_batch", max_batch)):
        if value < 1:
            raise CnnlabError(f"{param(option)}: expected a positive integer, got {value}")
    if not 0 <= batch_wait_ms < math.inf:
        raise CnnlabError(f"{param('batch_wait_ms')}: expected milliseconds, 0 or more, got {batch_wait_ms}")


def serve(run: str | os.PathLike, gallery: str | os.PathLike | None = None, host: str = "127.0.0.1",
          port: int = 8000, token: str | None = None, max_upload_mb: float = 10.0, cors: Sequence[str] = (),
          device: str = "auto", max_batch: int = 64, batch_wait_ms: float = 5.0, max_images: int = 16,
          allow_unfinished: bool = False, align: str | None = None) -> None:
    """Serve the finished run at ``run`` on ``host``:``port`` until Ctrl-C (see
    :func:`cnnlab.serve.app.create_app`, which checks the run, the gallery and ``align`` before it loads the
    network). The options are checked before anything else is done."""
    require_extra()
    token = resolve_token(host, token)
    check_options(port, max_upload_mb, max_images, max_batch, batch_wait_ms)
    study = run_study(run)
    import uvicorn

    from cnnlab.serve.app import create_app

    sock = _listen(host, port)
    try:
        app = create_app(run, gallery, token, int(max_upload_mb * MB), device=device, cors_origins=cors,
                         max_images=max_images, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                         allow_unfinished=allow_unfinished, align=align)
        bound = sock.getsockname()[1]
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        what = "face run" if study == "faces" else "CIFAR run"
        print(f"serving the {what} {shown_path(run)} at http://{shown}:{bound}/ (API docs at /docs"
              f"{', token required' if token else ''}); Ctrl-C stops", flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    sys.stdout.flush()
