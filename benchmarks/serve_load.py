"""Requests per second of ``cnnlab serve`` with 1, 4 and 16 concurrent clients, on this machine.

Starts ``cnnlab serve`` on a free localhost port (the run given by ``--run``,
or a small face run it makes itself: synthetic people, EfficientNet-Lite0 with
its shipped ImageNet weights, ``--epochs 0``, so a real network at 112 px
without training), warms it up, then for each client count sends the same
bounded number of requests (``--requests``) from that many threads, each on
its own keep-alive connection, as fast as answers come. A face run is asked
``POST /verify`` (two images), a CIFAR run ``POST /predict`` (one image).

It prints the machine, then one row per client count: requests/s, p50 and p95
latency, errors (any answer but 200), and the mean batch the network ran
(from ``/info``), then how 16 clients compare with one. ``--json FILE``
writes the same.

    python benchmarks/serve_load.py --json serve_load.json
    python benchmarks/serve_load.py --run runs/triplet --clients 1,4,16 --requests 400

Time: about 30 seconds on 2 cores with the defaults (28 s with other jobs on
the cores: making the run and starting the service take a third of it, then
200 requests at 25-80 requests/s for each client count).
Each client count stops sending at --max-seconds (default 60) and its row
counts the requests answered by then, so a slow run or service ends within
about --max-seconds per client count.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image, ImageDraw

from cnnlab.runtime import cpu_features

_SRC = Path(__file__).resolve().parents[1] / "src"


# --- a run to serve -------------------------------------------------------------------------------------


def _draw_people(root: Path, people: int = 10, images: int = 4, side: int = 160, seed: int = 0) -> Path:
    """``root/Person_NN/Person_NN_000K.jpg``: each person a colour and a shape, each image shifted a little."""
    rng = np.random.default_rng(seed)
    for p in range(people):
        folder = root / f"Person_{p:02d}"
        folder.mkdir(parents=True)
        bg, fg = tuple(int(c) for c in rng.integers(30, 225, 3)), tuple(int(c) for c in rng.integers(30, 225, 3))
        for i in range(images):
            img = Image.new("RGB", (side, side), bg)
            o = int(rng.integers(-10, 10))
            box = [side // 4 + o, side // 5 + o, 3 * side // 4 + o, 4 * side // 5 + o]
            (ImageDraw.Draw(img).ellipse if p % 2 else ImageDraw.Draw(img).rectangle)(box, fill=fg)
            img.save(folder / f"Person_{p:02d}_{i + 1:04d}.jpg", quality=90)
    return root


def make_face_run(folder: Path, backbone: str, image_size: int) -> Path:
    """A face run of ``backbone`` evaluated untrained (``--epochs 0``) on synthetic people: seconds, offline."""
    from cnnlab.config import FaceTrainConfig
    from cnnlab.faces.train import train

    people = _draw_people(folder / "people")
    weights = "none" if backbone == "tiny" else "imagenet"
    # The drawn people have no faces to detect: the centre crop, or every request is refused (422).
    cfg = FaceTrainConfig(data_dir=str(people), backbone=backbone, weights=weights, image_size=image_size,
                          crop=1.0, align="center", embedding_dim=128, epochs=0, val_fraction=0.2, test_fraction=0.3,
                          eval_batch_size=64, device="cpu")
    train(cfg, folder / "run", progress=False)
    return folder / "run"


# --- the service and its clients --------------------------------------------------------------------------


class Service:
    """``cnnlab serve RUN --port 0`` in a process of its own; its URL once it listens."""

    def __init__(self, run: Path, device: str, extra: list[str], log: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_SRC), os.environ.get("PYTHONPATH")]))}
        self.log = open(log, "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", str(run), "--port", "0", "--device",
                                      device, *extra], stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        for line in self.proc.stdout:
            m = re.search(r"at (http://\S+/) ", line)
            if m:
                self.url = m.group(1)
                return
        self.log.seek(0)
        raise SystemExit(f"cnnlab serve did not start (exit {self.proc.wait()}):\n{self.log.read()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _multipart(fields: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "cnnlab-serve-load"
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.jpg\"\r\n"
                    f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for name, data in fields)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _get_json(url: str, path: str) -> dict:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", path)
    r = conn.getresponse()
    out = json.loads(r.read())
    conn.close()
    return out


def load(url: str, path: str, bodies: list[tuple[bytes, str]], clients: int, requests: int,
         max_seconds: float = 0) -> dict:
    """``requests`` POSTs to ``path`` from ``clients`` threads, none started after ``max_seconds``
    (0: no limit); wall time, latencies and errors."""
    u = urlsplit(url)
    deadline = time.perf_counter() + max_seconds if max_seconds else float("inf")
    latencies: list[float] = []
    errors: list[str] = []
    lock, counter = threading.Lock(), iter(range(requests))

    def client():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        while True:
            with lock:
                i = next(counter, None) if time.perf_counter() < deadline else None
            if i is None:
                break
            body, ctype = bodies[i % len(bodies)]
            start = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
                why = f"HTTP {r.status}"
            except (OSError, http.client.HTTPException) as e:
                ok, why = False, f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
            took = time.perf_counter() - start
            with lock:
                latencies.append(took) if ok else errors.append(why)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    return {"clients": clients, "requests": len(latencies) + len(errors), "seconds": round(wall, 3),
            "requests/s": round(len(latencies) / wall, 2), "p50 ms": round(statistics.median(ms), 1),
            "p95 ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 1), "errors": len(errors),
            "error kinds": sorted(set(errors))[:5]}


def _bodies(run: Path, study: str, n: int = 8) -> tuple[str, list[tuple[bytes, str]]]:
    """The endpoint to load and ``n`` request bodies for it (JPEGs of the run's own size, or larger)."""
    rng = np.random.default_rng(0)

    def jpeg(side: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).resize((side, side)).save(buf, "JPEG")
        return buf.getvalue()

    if study == "faces":
        people = sorted(Path(run).parent.glob("people/*/*.jpg"))
        images = [p.read_bytes() for p in people[:2 * n]] or [jpeg(160) for _ in range(2 * n)]
        return "/verify", [_multipart([("a", images[(2 * i) % len(images)]), ("b", images[(2 * i + 1) % len(images)])])
                           for i in range(n)]
    return "/predict", [_multipart([("images", jpeg(32))]) for _ in range(n)]


# --- the table ------------------------------------------------------------------------------------------


def machine() -> str:
    name, features = cpu_features()
    return (f"CPU: {name} ({os.cpu_count()} logical cores); vector extensions: {', '.join(features) or 'none'}; "
            f"torch {torch.__version__}; Python {platform.python_version()}")


def _print_table(rows: list[dict]) -> None:
    cols = ["clients", "requests", "requests/s", "p50 ms", "p95 ms", "errors", "mean batch"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---:" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__[__doc__.index("Time:"):].split("\n\n")[0])
    p.add_argument("--run", help="a finished face or CIFAR run to serve (default: make a small face run)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="backbone of the run made when --run is not "
                                                                     "given (default: efficientnet_lite0; tiny: "
                                                                     "a toy network)")
    p.add_argument("--image-size", type=int, default=112, help="image size of the run made (default: 112)")
    p.add_argument("--clients", default="1,4,16", help="concurrent client counts (default: 1,4,16)")
    p.add_argument("--requests", type=int, default=200, help="requests per client count (default: 200)")
    p.add_argument("--warmup", type=int, default=10, help="requests before measuring (default: 10)")
    p.add_argument("--max-seconds", type=float, default=60,
                   help="no request is sent after this many seconds of a client count; 0: no limit (default: 60)")
    p.add_argument("--device", default="cpu", help="the service's --device (default: cpu)")
    p.add_argument("--serve-args", default="", help="more options for cnnlab serve, e.g. '--batch-wait-ms 2'")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    try:
        clients = [int(c) for c in args.clients.replace(" ", ",").split(",") if c]
    except ValueError:
        raise SystemExit(f"--clients: expected numbers like 1,4,16, got {args.clients!r}") from None
    if args.requests < 1 or not clients or min(clients) < 1:
        raise SystemExit("--requests and every --clients count must be at least 1")

    with tempfile.TemporaryDirectory(prefix="cnnlab-serve-load-") as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else make_face_run(tmp, args.backbone, args.image_size)
        service = Service(run, args.device, args.serve_args.split(), tmp / "serve.log")
        try:
            info = _get_json(service.url, "/info")
            path, bodies = _bodies(run, info["study"])
            load(service.url, path, bodies, min(4, max(clients)), args.warmup)
            rows = []
            for c in clients:
                before = _get_json(service.url, "/info")["batching"]
                row = load(service.url, path, bodies, c, args.requests, args.max_seconds)
                after = _get_json(service.url, "/info")["batching"]
                calls = after["batches"] - before["batches"]
                row["mean batch"] = round((after["images"] - before["images"]) / calls, 2) if calls else None
                rows.append(row)
        finally:
            service.stop()

    out = {"machine": machine(), "run": str(args.run or f"made: {args.backbone} at {args.image_size} px, epochs 0"),
           "endpoint": f"POST {path}", "model": info["model"], "rows": rows}
    print(out["machine"])
    print(f"run: {out['run']}; endpoint: {out['endpoint']}; {args.requests} requests per row"
          + (f" (fewer where --max-seconds {args.max_seconds:g} ran out)"
             if any(r["requests"] < args.requests for r in rows) else ""))
    _print_table(rows)
    base = next((r for r in rows if r["clients"] == 1), None)
    if base and base["requests/s"] > 0:
        for r in rows:
            r["vs 1 client"] = round(r["requests/s"] / base["requests/s"], 2)
        print("requests/s relative to one client: " + ", ".join(f"{r['clients']}: {r['vs 1 client']}x" for r in rows))
    for r in rows:
        if r["errors"]:
            print(f"{r['clients']} clients: {r['errors']} errors, e.g. {r['error kinds']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
