"""``cnnlab serve``: a finished run as a local HTTP service and a web page.

:func:`create_app` builds the FastAPI application of a face run (``/verify``,
``/identify``, ``/embed``) or a CIFAR run (``/predict``), both with
``/health``, ``/info`` and the page at ``/``; :func:`serve` runs it with
uvicorn. FastAPI, uvicorn and python-multipart are the optional extra
``serve`` (``pip install "cnnlab[serve]"``); without them this package still
imports, and :func:`require_extra` says what to install.
"""

from __future__ import annotations

import importlib.util

from cnnlab.errors import CnnlabError

_EXTRA = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}
INSTALL_HINT = 'pip install "cnnlab[serve]" (in a checkout: pip install -e ".[serve]")'


def require_extra() -> None:
    """A :class:`CnnlabError` naming the missing packages and the pip command, unless all are installed."""
    missing = [pkg for module, pkg in _EXTRA.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise CnnlabError(f"cnnlab serve needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: {INSTALL_HINT}")


def create_app(*args, **kwargs):
    """The FastAPI app of a finished run; see :func:`cnnlab.serve.app.create_app`."""
    require_extra()
    from cnnlab.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args, **kwargs) -> None:
    """Serve a finished run until Ctrl-C; see :func:`cnnlab.serve.server.serve`."""
    require_extra()
    from cnnlab.serve.server import serve as _serve

    _serve(*args, **kwargs)


__all__ = ["INSTALL_HINT", "create_app", "require_extra", "serve"]
