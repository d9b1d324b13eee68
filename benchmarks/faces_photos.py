"""Face verification on photos, not crops: LFW View 1's test pairs as photo-like images, side by side.

    python benchmarks/faces_photos.py DATA_DIR RUN [RUN ...] [--out DIR] [--json FILE]

DATA_DIR is LFW with its protocol files (as for ``--protocol lfw-view1``).
Each image of the 1,000 pairs of ``pairsDevTest.txt`` is turned into a photo:
the face image, scaled (0.45-1.2x) and tilted (up to 12 degrees), is placed at
random on a larger canvas (480-720 px wide) of clutter (blurred noise,
rectangles and ellipses of random colours), and a quarter of the photos are
stored rotated with the EXIF orientation tag that turns them upright again (as
phones store portrait shots). The photos are written once under ``--out``
(default: ``DATA_DIR/../lfw-view1-photos``) with the people-folder layout.

A second set, ``--out`` + ``-distractors``, puts a distractor behind each
subject: the face image of another person, 1.4-2.2 times as large and out of
focus (a Gaussian blur of 2.5-5 % of its side), as a poster, a screen or a
person nearer the camera would be. There the largest face is the wrong one.

Every RUN (a finished face run) is then scored on the original images and on
each set of photos, with the run's own ``--align`` and with each other
``--align`` given by ``--align`` (default: auto and center): ROC AUC, EER, and
accuracy at the run's threshold, the originals and the photos in one row.
Faces are found as in ``cnnlab faces evaluate`` (a folder: auto centre-crops an
image without a face, and the row counts them). Of several faces, cnnlab uses
the one the photo is of (confidence, sharpness and size together); each row
that detects faces is scored again as a reference with the largest face, as
cnnlab chose before, side by side (``--choose``).

Time: about 6 minutes on 2 cores for two runs (four rows) the first time
(extrapolated from 200 pairs of the LFW sample: 238 images, 41 s on a shared
machine): finding the faces of the ~1,700 originals and their photos for
``auto`` takes most of it and is cached with the decoded images, so a second
call takes about 2 minutes. A row after the first is only started within
--max-seconds (default 1200) of the start; the rows left out are named under
the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

EXIF_ORIENTATION = 0x0112
# Orientation tag -> the rotation (degrees, counter-clockwise) that stores an upright picture under that tag.
_STORED_ROTATION = {3: 180, 6: 90, 8: 270}


def clutter(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A busy background: blurred colour noise with random rectangles and ellipses on it."""
    w, h = size
    nrng = np.random.default_rng(rng.randrange(2**32))
    noise = Image.fromarray(nrng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)).resize(size)
    img = noise.filter(ImageFilter.GaussianBlur(3))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 14)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = (x0, y0, x0 + rng.randint(20, w // 2), y0 + rng.randint(20, h // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)(box, fill=colour)
    return img


def photo(face: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    """``face`` placed on a cluttered canvas, and the EXIF orientation to store it under (1: none)."""
    w = rng.randint(480, 720)
    h = int(w * rng.uniform(0.7, 1.0))
    canvas = clutter(rng, (w, h))
    scale = rng.uniform(0.45, 1.2)
    f = face.convert("RGB").resize((int(face.width * scale), int(face.height * scale)), Image.Resampling.BICUBIC)
    mask = Image.new("L", f.size, 255)
    angle = rng.uniform(-12, 12)
    f, mask = (x.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) for x in (f, mask))
    x = rng.randint(0, max(0, w - f.width))
    y = rng.randint(0, max(0, h - f.height))
    canvas.paste(f, (x, y), mask)
    orientation = rng.choice([3, 6, 8]) if rng.random() < 0.25 else 1
    return canvas, orientation


def distractor_photo(face: Image.Image, other: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    """:func:`photo` with ``other`` (another person's face image) behind the subject, larger and out of focus."""
    w = rng.randint(720, 960)
    h = int(w * rng.uniform(0.6, 0.8))
    canvas = clutter(rng, (w, h))
    side = rng.uniform(0.45, 0.8) * face.width  # the subject's width on the canvas
    big = min(rng.uniform(1.4, 2.2) * side, 0.95 * h)
    o = other.convert("RGB").resize((int(big), int(big * other.height / other.width)), Image.Resampling.BICUBIC)
    o = o.filter(ImageFilter.GaussianBlur(rng.uniform(0.025, 0.05) * o.width))
    left = rng.random() < 0.5  # the distractor on one side, the subject on the other, overlapping a little
    ox = rng.randint(0, max(0, w // 2 - o.width // 3)) if left else rng.randint(w // 2 - 2 * o.width // 3, w - o.width)
    canvas.paste(o, (max(0, min(ox, w - o.width)), rng.randint(0, max(0, h - o.height))))
    f = face.convert("RGB").resize((int(side), int(side * face.height / face.width)), Image.Resampling.BICUBIC)
    mask = Image.new("L", f.size, 255)
    angle = rng.uniform(-12, 12)
    f, mask = (x.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) for x in (f, mask))
    half = (w // 2, w - f.width) if left else (0, w // 2 - f.width)
    x = rng.randint(max(0, min(half)), max(0, max(half)))
    canvas.paste(f, (x, rng.randint(0, max(0, h - f.height))), mask)
    orientation = rng.choice([3, 6, 8]) if rng.random() < 0.25 else 1
    return canvas, orientation


def save_photo(img: Image.Image, orientation: int, path: Path) -> None:
    """Write ``img`` so that a viewer honouring EXIF shows it upright: pixels turned, the tag saying how."""
    stored = img.rotate(_STORED_ROTATION[orientation], expand=True) if orientation != 1 else img
    exif = Image.Exif()
    if orientation != 1:
        exif[EXIF_ORIENTATION] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, format="JPEG", quality=92, exif=exif.tobytes())


def make_photos(people_root: Path, files: list[str], out: Path, seed: int = 0, distractors: bool = False) -> int:
    """Write the photo of every file (relative to ``people_root``) under ``out``; returns how many were new.

    With ``distractors``, each photo has another person's face behind the
    subject (:func:`distractor_photo`), drawn from ``files`` by the seed.
    """
    made = 0
    for rel in files:
        dst = (out / rel).with_suffix(".jpg")
        if dst.is_file():
            continue
        rng = random.Random(f"{seed}:{rel}")  # the same photo for the same image, in any order
        with Image.open(people_root / rel) as im:
            if distractors:
                others = [f for f in files if f.split("/")[0] != rel.split("/")[0]] or files
                with Image.open(people_root / rng.choice(others)) as other:
                    img, orientation = distractor_photo(im, other, rng)
            else:
                img, orientation = photo(im, rng)
        save_photo(img, orientation, dst)
        made += 1
    return made


def _pair_files(data_dir: Path, max_pairs: int = 0, seed: int = 0):
    """The test pairs of View 1 (``max_pairs`` of them, half of each kind, drawn by ``seed``; 0: all) and the
    people folder."""
    import dataclasses

    from cnnlab.data.faces import find_people_root
    from cnnlab.data.lfw import read_pairs

    pairs = read_pairs(data_dir / "pairsDevTest.txt")
    if max_pairs and max_pairs < len(pairs):
        g = torch.Generator().manual_seed(seed)
        keep = torch.cat([k[torch.randperm(len(k), generator=g)[:max_pairs // 2]]
                          for k in (torch.nonzero(pairs.same).flatten(), torch.nonzero(~pairs.same).flatten())])
        keep = keep.sort().values
        pairs = dataclasses.replace(pairs, left=[pairs.left[i] for i in keep], right=[pairs.right[i] for i in keep],
                                    same=pairs.same[keep], fold=pairs.fold[keep], lines=pairs.lines[keep])
    return pairs, find_people_root(data_dir)


@contextlib.contextmanager
def choosing(how: str) -> Iterator[Path | None]:
    """Within, faces are chosen as ``how`` says: ``ranked`` (cnnlab's choice: confidence, sharpness and size)
    or ``largest`` (the reference: the largest face, as cnnlab chose before), with a face cache of its own
    (the folder it yields) so that neither reads the other's crops."""
    if how == "ranked":
        yield None
        return
    from cnnlab.data import align

    real = align.ranked
    align.ranked = lambda img, faces: sorted(faces, key=lambda f: f.area, reverse=True)
    try:
        with tempfile.TemporaryDirectory(prefix="cnnlab-largest-") as cache:
            yield Path(cache)
    finally:
        align.ranked = real


def score(run_dir: str, folder: Path, pairs, align: str, cache_dir: Path | None = None) -> dict:
    """ROC AUC, EER and accuracy at the run's threshold of ``pairs`` with the images of ``folder``."""
    from cnnlab.data.faces import load_faces
    from cnnlab.data.lfw import resolve_pairs
    from cnnlab.inference.faces import FaceVerifier
    from cnnlab.metrics import accuracy_at_threshold, equal_error_rate, pair_distances, roc_auc

    fv = FaceVerifier.from_run(run_dir, device="cpu", align=align)
    cfg = fv.cfg
    faces = load_faces(_only(folder, pairs), image_size=cfg.image_size, crop=cfg.crop, align=align,
                       cache_dir=cache_dir)
    i, j = resolve_pairs(pairs, faces)
    used = torch.unique(torch.cat([i, j]))
    emb = fv.network(faces.images[used])
    d = pair_distances(emb, torch.searchsorted(used, i), torch.searchsorted(used, j))
    same = pairs.same
    a = faces.alignment
    return {"roc_auc": roc_auc(d, same), "eer": equal_error_rate(d, same)[0],
            "accuracy": accuracy_at_threshold(d, same, fv.threshold),
            "no_face": int(a.get("center", 0) if align == "auto" else 0) + int(a.get("no_face", 0)),
            "several": int(a.get("several", 0))}


def _only(folder: Path, pairs):
    """The listing of ``folder`` narrowed to the images of ``pairs`` (so only they are decoded)."""
    from cnnlab.data.faces import list_faces
    from cnnlab.data.lfw import resolve_pairs

    listing = list_faces(folder)
    return listing.only(torch.unique(torch.cat(resolve_pairs(pairs, listing))))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog=__doc__[__doc__.index("Time:"):].split("\n\n")[0])
    p.add_argument("data_dir", type=Path, help="LFW with pairsDevTest.txt and its people folders")
    p.add_argument("runs", nargs="+", help="finished face runs to score")
    p.add_argument("--out", type=Path, help="folder for the photos (default: DATA_DIR/../lfw-view1-photos)")
    p.add_argument("--align", default="auto,center", help="--align values to score each run with besides its own "
                                                           "(comma-separated; default: auto,center)")
    p.add_argument("--choose", default="ranked,largest",
                   help="how a face is chosen among several, for rows that detect faces: ranked (cnnlab's: "
                        "confidence, sharpness and size), largest (the reference); comma-separated "
                        "(default: ranked,largest)")
    p.add_argument("--sets", default="photos,distractors",
                   help="photo sets to score: photos, distractors (comma-separated; default: both)")
    p.add_argument("--max-pairs", type=int, default=0,
                   help="score this many of the 1,000 test pairs, half of each kind, drawn by --seed (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the photos (default: 0)")
    p.add_argument("--max-seconds", type=float, default=1200,
                   help="start no row after this many seconds; 0: no limit (default: 1200)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)

    from cnnlab.runtime import cpu_features

    pairs, root = _pair_files(args.data_dir, args.max_pairs, args.seed)
    base = args.out or args.data_dir.resolve().parent / "lfw-view1-photos"
    files = sorted({f"{n}/{n}_{k:04d}.jpg" for side in (pairs.left, pairs.right) for n, k in side})
    sets = {}
    for kind in args.sets.split(","):
        if kind not in ("photos", "distractors"):
            p.error(f"--sets: expected photos and/or distractors, got {kind!r}")
        out = base if kind == "photos" else base.with_name(base.name + "-distractors")
        t = time.perf_counter()
        made = make_photos(root, files, out, args.seed, distractors=kind == "distractors")
        print(f"{kind}: {len(files)} images of {len(pairs)} pairs: {made} made ({time.perf_counter() - t:.0f} s), "
              f"{len(files) - made} there from before, in {out}")
        sets[kind] = out
    name, features = cpu_features()
    print(f"CPU: {name}; vector extensions: {', '.join(features) or 'none'}; torch {torch.__version__}")
    rows, left_out = _rows(args, pairs, root, sets)
    _table(rows)
    if left_out:
        print(f"not scored within --max-seconds {args.max_seconds:g}: " + "; ".join(left_out))
    result = {"cpu": name, "photos": {k: str(v) for k, v in sets.items()}, "pairs": len(pairs), "rows": rows,
              "left_out": left_out}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _rows(args, pairs, root: Path, sets: dict[str, Path]) -> tuple[list[dict], list[str]]:
    """One row per run, align mode, face choice and photo set: the originals and the photos side by side."""
    from cnnlab.inference.runs import face_config
    from cnnlab.run import RunDir

    rows, left_out, start = [], [], time.perf_counter()
    for run in args.runs:
        own = face_config(RunDir(run)).align
        for align in dict.fromkeys([own, *args.align.split(",")]):
            for how in (args.choose.split(",") if align != "center" else ["ranked"]):  # center detects nothing
                with choosing(how) as cache:
                    orig = None
                    for kind, folder in sets.items():
                        t = time.perf_counter()
                        if rows and args.max_seconds and t - start > args.max_seconds:  # the first row always
                            left_out.append(f"{run} with --align {align}, {how}, {kind}")
                            continue
                        orig = orig or score(run, root, pairs, align, cache)
                        ph = score(run, folder, pairs, align, cache)
                        rows.append({"run": run, "trained with": own, "align": align, "choice": how, "set": kind,
                                     "originals roc_auc": orig["roc_auc"], "photos roc_auc": ph["roc_auc"],
                                     "difference": ph["roc_auc"] - orig["roc_auc"], "originals eer": orig["eer"],
                                     "photos eer": ph["eer"], "originals accuracy": orig["accuracy"],
                                     "photos accuracy": ph["accuracy"], "photos without a face": ph["no_face"],
                                     "photos with several faces": ph["several"], "seconds": time.perf_counter() - t})
    return rows, left_out


def _table(rows: list[dict]) -> None:
    cols = ["run", "trained with", "align", "choice", "set", "originals roc_auc", "photos roc_auc", "difference",
            "photos eer", "photos accuracy", "photos without a face", "photos with several faces", "seconds"]
    cells = [[f"{r[c]:.3f}" if isinstance(r[c], float) and c != "seconds" else
              f"{r[c]:.0f}" if c == "seconds" else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for x in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(x, widths)) + " |")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
