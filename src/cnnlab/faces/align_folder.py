"""``cnnlab faces align SRC DST``: detect and align every face of a folder once, into a new folder.

The output has the layout of the input (one sub-folder per person), each
image the aligned face at ``--size`` pixels (JPEG, quality 95), and
``cnnlab-aligned.json``: what was done, and which images were skipped and why.
Training or a gallery on the output uses its images as they are. A second run
of the same command continues an interrupted one: images already written are
kept.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cnnlab import __version__
from cnnlab.data.align import ALIGNED_MARKER, DETECTOR, NoFace, detector, progress, ranked, template
from cnnlab.data.align import align as warp
from cnnlab.data.faces import find_people_root, list_faces
from cnnlab.data.images import BadImage, decode_rgb
from cnnlab.errors import CnnlabError, param
from cnnlab.files import atomic_write_bytes, dumps_json

logger = logging.getLogger(__name__)

_SHOWN = 10


def _check_out(src: Path, dst: Path, size: int) -> None:
    if dst.exists() and not dst.is_dir():
        raise CnnlabError(f"DST {dst} is a file, expected a folder")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise CnnlabError(f"DST {dst} is inside SRC {src}; choose a folder outside it")
    marker = dst / ALIGNED_MARKER
    if dst.is_dir() and any(dst.iterdir()) and not marker.is_file():
        raise CnnlabError(f"DST {dst} is not empty and was not written by cnnlab faces align; choose an empty "
                          "or new folder")
    if marker.is_file():
        import json

        try:
            before = json.loads(marker.read_text())
        except (OSError, ValueError):
            before = {}
        if before.get("size") != size or Path(before.get("source", "")) != src.resolve():
            raise CnnlabError(f"DST {dst} holds faces aligned from {before.get('source')} at {before.get('size')} "
                              f"px; continuing it needs the same SRC and {param('size')} (got {src.resolve()}, {size})")


def _save(img, out: Path) -> None:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())


def align_folder(src: str | os.PathLike, dst: str | os.PathLike, size: int = 112) -> dict:
    """Align every face under ``src`` into ``dst`` (see the module's docstring); returns the report."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise CnnlabError(f"{param('size')}: expected an integer of at least 16, got {size!r}")
    root = find_people_root(src)
    dst = Path(dst)
    _check_out(root, dst, size)
    flat = [p for person in list_faces(root, skip_bad=True).paths for p in person]
    det = detector()
    lock = threading.Lock()
    report: dict = {"source": str(root.resolve()), "size": size, "detector": DETECTOR,
                    "template": template(size).round(4).tolist(), "cnnlab_version": __version__,
                    "images": len(flat), "aligned": 0, "kept_from_before": 0, "no_face": [], "bad": [],
                    "several_faces": []}
    dst.mkdir(parents=True, exist_ok=True)
    _write_report(dst, report, finished=False)  # marks the folder as ours, so a rerun continues it

    def one(path: Path) -> None:
        rel = path.relative_to(root)
        out = (dst / rel).with_suffix(".jpg")
        if out.is_file():
            with lock:
                report["kept_from_before"] += 1
            return
        try:
            img = decode_rgb(path)
            faces = ranked(img, det.find(img))  # the face the photo is of first
            if not faces:
                raise NoFace(path)
            _save(warp(img, faces[0].landmarks, size), out)
        except NoFace:
            with lock:
                report["no_face"].append(rel.as_posix())
            return
        except BadImage as e:
            with lock:
                report["bad"].append(f"{rel.as_posix()}: {e.why}")
            return
        with lock:
            report["aligned"] += 1
            if len(faces) > 1:
                report["several_faces"].append(rel.as_posix())

    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in progress(pool.map(one, flat), len(flat), f"aligning faces of {root.name}"):
            pass
    for key in ("no_face", "bad", "several_faces"):
        report[key].sort()
    _write_report(dst, report, finished=True)
    _log(report, dst)
    return report


def _write_report(dst: Path, report: dict, finished: bool) -> None:
    atomic_write_bytes(dst / ALIGNED_MARKER, (dumps_json({**report, "finished": finished}) + "\n").encode())


def _log(r: dict, dst: Path) -> None:
    """What the command's one printed line leaves out: which images were skipped, and why."""
    if r["kept_from_before"]:
        logger.info("%d of the images were aligned into %s before; kept", r["kept_from_before"], dst)
    for key, what in (("no_face", "no face found"), ("bad", "cannot be decoded")):
        if r[key]:
            more = f" and {len(r[key]) - _SHOWN} more" if len(r[key]) > _SHOWN else ""
            logger.warning("skipped %d image(s), %s: %s%s", len(r[key]), what, ", ".join(r[key][:_SHOWN]), more)
    if r["several_faces"]:
        logger.info("%d image(s) hold several faces; of each, the one the photo is of (by the detector's confidence, "
                    "sharpness and size) was aligned", len(r["several_faces"]))
