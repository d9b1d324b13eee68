"""``cnnlab serve``: the subcommand. Thin: parse, call :func:`cnnlab.serve.server.serve`."""

from __future__ import annotations

import argparse

from cnnlab.commands.options import ALLOW_UNFINISHED, DEVICE, add_command, arg
from cnnlab.config import FACE_ALIGNS


def _serve(args: argparse.Namespace) -> int:
    from cnnlab.serve.server import serve

    serve(args.run_dir, gallery=args.gallery, host=args.host, port=args.port, token=args.token,
          max_upload_mb=args.max_upload_mb, cors=args.cors or (), device=args.device, max_batch=args.max_batch,
          batch_wait_ms=args.batch_wait_ms, max_images=args.max_images, allow_unfinished=args.allow_unfinished,
          align=args.align)
    return 0


NOTES = """\
security:
  The service listens on 127.0.0.1 (this machine only) unless --host says otherwise; any other
  address needs --token (or CNNLAB_SERVE_TOKEN) of at least 16 characters other than whitespace,
  sent by clients as 'Authorization: Bearer TOKEN' on every request but /health (a browser opens
  the page once as /?token=TOKEN). Uploads are decoded as images whatever their name says, each at
  most --max-upload-mb, about 89 megapixels and 20:1 in aspect ratio.
  No other web page may call the API (no CORS) unless --cors names its origin.

Needs the optional packages: pip install "cnnlab[serve]"."""


def add_serve(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub, "serve", _serve, help="serve a finished run as a local HTTP service and web page",
        description="Serve a finished face run (POST /verify, /identify, /embed) or CIFAR run (POST /predict) "
                    "over HTTP, with GET /health, GET /info, API docs at /docs and a web page at /. The run "
                    "folder says which study it is.",
        examples=["cnnlab serve runs/triplet --gallery data/office",
                  "cnnlab serve runs/quick --port 8080",
                  "CNNLAB_SERVE_TOKEN=$(openssl rand -hex 16) cnnlab serve runs/triplet --host 0.0.0.0"],
        notes=NOTES,
        args=[arg("run_dir", metavar="RUN", help="folder of a finished face or CIFAR run"),
              arg("--gallery", metavar="DIR", help="face runs: folder of people (one sub-folder each) that "
                                                   "/identify searches"),
              arg("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                                                      "only; any other needs --token)"),
              arg("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)"),
              arg("--token", help="bearer token every request but /health must carry (default: "
                                  "$CNNLAB_SERVE_TOKEN; required unless --host is a loopback address)"),
              arg("--max-upload-mb", type=float, default=10.0, help="largest image file accepted, in MiB "
                                                                    "(default: 10)"),
              arg("--max-images", type=int, default=16, help="most images one /predict request may hold "
                                                             "(default: 16)"),
              arg("--cors", action="append", metavar="ORIGIN", help="allow web pages from ORIGIN (e.g. "
                                                                     "http://localhost:3000) to call the API; "
                                                                     "repeat for several (default: none)"),
              arg("--align", choices=FACE_ALIGNS, default=None,
                  help="face runs: how the face is found in each image sent: auto or detect (detect and align it), "
                       "or center (the centre crop, for photos in which no face is found); default: as the run "
                       "was trained, which is what its threshold fits"),
              DEVICE,
              ALLOW_UNFINISHED,
              arg("--max-batch", type=int, default=64, help="most images one network call takes from "
                                                            "concurrent requests (default: 64)"),
              arg("--batch-wait-ms", type=float, default=5.0, help="longest a network call waits for requests "
                                                                   "already arriving (default: 5)")],
    )
