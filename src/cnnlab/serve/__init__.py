"""``cnnlab serve``: a finished run as a local HTTP service and a web page.

:func:`cnnlab.serve.app.create_app` builds the FastAPI application of a face
run (``/verify``, ``/identify``, ``/embed``) or a CIFAR run (``/predict``),
both with ``/health``, ``/info`` and the page at ``/``;
:func:`cnnlab.serve.server.serve` runs it with uvicorn. FastAPI, uvicorn and
python-multipart are the optional extra ``serve`` (``pip install
"cnnlab[serve]"``); :func:`cnnlab.serve.server.require_extra` says what to
install where they are missing.

    service.py   which study a run is; what both studies' services share (no FastAPI)
    uploads.py   uploaded bytes to an image, safely
    batching.py  concurrent requests share the network's calls
    faces.py, cifar.py   each study's endpoints
    app.py       the app: the token and size guard, errors as JSON, /health, /info, the page
    server.py    the exposure rule, the socket, uvicorn
    cli.py       the subcommand
"""
