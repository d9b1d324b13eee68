"""Pack CIFAR-10 and LFW View 1 into two tar.xz files small enough to travel to a GPU machine.

    python benchmarks/pack_data.py --cifar-dir data/cifar10 --lfw-dir data/lfw --out packed/

The GPU machine has no network and takes at most 64 MiB of files with the working tree, so:

- ``cifar10.tar.xz`` holds the image folders as they are (``cifar10/train/<class>/*``,
  ``cifar10/test/<class>/*``: about 19 MB for the complete JPEG set);
- ``lfw-view1.tar.xz`` holds the people of ``peopleDevTrain.txt``, ``peopleDevTest.txt`` (and of
  ``pairs.txt``, so View 2 can be scored too), already centre-cropped to ``--crop`` of the shorter
  side (cnnlab's LFW crop) and resized to ``--size`` px, as JPEG in the same layout
  (``lfw/images_deepfunneled/<Name>/<Name>_NNNN.jpg``), with the protocol files beside it
  (about 40 MB for all of LFW at 112 px). A run on these images must use ``--crop 1.0``: the crop
  has been made already.

Both are written under temporary names and only kept when their total is within ``--limit-mib``.
``--invent-view1`` writes View-1-like protocol files (half the people train, half test, pairs among
the test people) when the folder has none, for a dry run on a small sample; never for real figures.
Nothing this script makes belongs in git.

Time: 1 to 3 minutes on 2 cores for the complete CIFAR-10 and LFW (60,000 and 13,233 images, xz
at its default level); about 10 seconds for the samples in ../shared/datasets (3,000 and 344). The
work is bounded by the input: one pass over each image, no repeats.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from cnnlab.data.faces import LFW_CROP, find_people_root
from cnnlab.data.images import BadImage, center_crop_resize, decode_rgb
from cnnlab.data.lfw import read_pairs, read_people
from cnnlab.errors import DataError

VIEW1_PEOPLE = ("peopleDevTrain.txt", "peopleDevTest.txt")
PROTOCOL_FILES = ("pairsDevTest.txt", *VIEW1_PEOPLE, "pairs.txt")
MIB = 2**20


class PackError(Exception):
    """Input that cannot be packed; the message names the file or option and what was expected."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__[__doc__.index("Time:"):].split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cifar-dir", type=Path, required=True,
                   help="CIFAR-10 image folders: holds train/<class>/* and test/<class>/*")
    p.add_argument("--lfw-dir", type=Path, required=True,
                   help="LFW: the people folder (or a folder holding images_deepfunneled/) with the protocol "
                        "files in it or in its parent: " + ", ".join(PROTOCOL_FILES))
    p.add_argument("--out", type=Path, default=Path("packed"),
                   help="folder for cifar10.tar.xz and lfw-view1.tar.xz")
    p.add_argument("--size", type=int, default=112, help="side of the packed face images in pixels")
    p.add_argument("--crop", type=float, default=LFW_CROP,
                   help="centre crop of the faces before resizing, as a fraction of the shorter side")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality of the packed face images")
    p.add_argument("--limit-mib", type=float, default=64.0, help="refuse when both files together are larger")
    p.add_argument("--invent-view1", action="store_true",
                   help="when View 1's protocol files are missing, write View-1-like ones from the people present "
                        "(for a dry run on a sample only)")
    p.add_argument("--force", action="store_true", help="replace packed files already in --out")
    return p


def _cifar_members(root: Path) -> list[tuple[Path, str]]:
    members = []
    for split in ("train", "test"):
        folder = root / split
        classes = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        if not classes:
            raise PackError(f"--cifar-dir {root}: expected {folder}/<class>/<image> folders, found none")
        for d in classes:
            members += [(f, f"cifar10/{split}/{d.name}/{f.name}") for f in sorted(d.iterdir()) if f.is_file()]
    return members


def pack_cifar(root: Path, dest: Path) -> int:
    """Write CIFAR-10's image folders under ``root`` into ``dest`` (tar.xz); returns the number of images."""
    members = _cifar_members(root)
    with tarfile.open(dest, "w:xz") as tar:
        for path, name in members:
            tar.add(path, arcname=name, recursive=False)
    return len(members)


def _find_protocol(name: str, lfw_dir: Path) -> Path | None:
    for place in (lfw_dir, lfw_dir.absolute().parent):
        if (place / name).is_file():
            return place / name
    return None


def invent_view1(people_root: Path, seed: int = 0) -> dict[str, str]:
    """View-1-like protocol texts for the people in ``people_root``: alternate people train / test,
    pairs (matched, then as many mismatched) among the test people."""
    people = {d.name: sorted(f.name for f in d.iterdir() if f.is_file())
              for d in sorted(people_root.iterdir()) if d.is_dir()}
    names = [n for n in people if people[n]]
    train, test = names[0::2], names[1::2]
    rng = random.Random(seed)
    same = [(n, 1, 2) for n in test if len(people[n]) >= 2]
    if not same or len(test) < 2:
        raise PackError(f"{people_root}: too few people with two or more images to invent View 1 test pairs")
    diff = [(a, 1, b, 1) for a, b in (rng.sample(test, 2) for _ in same)]

    def people_text(group):
        return "\n".join([str(len(group))] + [f"{n}\t{len(people[n])}" for n in group]) + "\n"

    pairs = [str(len(same))] + ["\t".join(map(str, s)) for s in same] + ["\t".join(map(str, d)) for d in diff]
    return {"peopleDevTrain.txt": people_text(train), "peopleDevTest.txt": people_text(test),
            "pairsDevTest.txt": "\n".join(pairs) + "\n"}


def _protocol_files(lfw_dir: Path, people_root: Path, invent: bool, scratch: Path) -> dict[str, Path]:
    """Each protocol file's path: found beside the images, or (``invent``) View 1's written into ``scratch``."""
    found = {name: _find_protocol(name, lfw_dir) for name in PROTOCOL_FILES}
    if invent and any(found[n] is None for n in ("pairsDevTest.txt", *VIEW1_PEOPLE)):
        print(f"no complete View 1 protocol in {lfw_dir}: inventing one from the people present (dry runs only)")
        for name, text in invent_view1(people_root).items():
            found[name] = scratch / name
            found[name].write_text(text)
    missing = [n for n in PROTOCOL_FILES if found[n] is None]
    if missing:
        raise PackError(f"--lfw-dir {lfw_dir}: protocol file(s) {', '.join(missing)} found neither there nor in "
                        f"its parent (expected LFW's {', '.join(PROTOCOL_FILES)}; --invent-view1 makes View 1's "
                        "for a dry run)")
    return found


def _people_needed(files: dict[str, Path]) -> set[str]:
    names: set[str] = set()
    try:  # cnnlab's own readers, so a bad file is reported as training would report it
        for name, path in files.items():
            if name.startswith("people"):
                names.update(read_people(path).names)
            else:
                pairs = read_pairs(path)
                names.update(n for n, _ in pairs.left + pairs.right)
    except DataError as e:
        raise PackError(str(e)) from None
    return names


def pack_lfw(lfw_dir: Path, dest: Path, size: int, crop: float, quality: int, invent: bool) -> int:
    """Write View 1's people, cropped and resized, and the protocol files into ``dest``; returns the image count."""
    try:
        people_root = find_people_root(lfw_dir)
    except DataError as e:
        raise PackError(f"--lfw-dir: {e}") from None
    with tempfile.TemporaryDirectory() as scratch:
        files = _protocol_files(lfw_dir, people_root, invent, Path(scratch))
        needed = _people_needed(files)
        absent = sorted(n for n in needed if not (people_root / n).is_dir())
        if absent:
            raise PackError(f"{people_root}: {len(absent)} person folder(s) named by the protocol files are "
                            f"missing, e.g. {', '.join(absent[:3])}")
        count = 0
        with tarfile.open(dest, "w:xz") as tar:
            for name, path in sorted(files.items()):
                tar.add(path, arcname=f"lfw/{name}")
            for person in sorted(needed):
                for f in sorted(p for p in (people_root / person).iterdir() if p.is_file()):
                    try:
                        img = center_crop_resize(decode_rgb(f), size, crop)
                    except BadImage as e:
                        raise PackError(str(e)) from None
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG", quality=quality)
                    _add_bytes(tar, f"lfw/images_deepfunneled/{person}/{f.stem}.jpg", buf.getvalue())
                    count += 1
    return count


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0.0 < args.crop <= 1.0:
        raise SystemExit(f"--crop must be in (0, 1], got {args.crop}")
    if args.size < 8:
        raise SystemExit(f"--size must be at least 8 pixels, got {args.size}")
    if not 1 <= args.quality <= 95:
        raise SystemExit(f"--quality must be 1..95, got {args.quality}")
    out = args.out
    final = {"cifar": out / "cifar10.tar.xz", "lfw": out / "lfw-view1.tar.xz"}
    existing = [str(p) for p in final.values() if p.exists()]
    if existing and not args.force:
        raise SystemExit(f"{', '.join(existing)} already exist(s); --force replaces them")
    out.mkdir(parents=True, exist_ok=True)
    tmp = {k: p.with_name(p.name + ".part") for k, p in final.items()}
    try:
        n_cifar = pack_cifar(args.cifar_dir, tmp["cifar"])
        n_faces = pack_lfw(args.lfw_dir, tmp["lfw"], args.size, args.crop, args.quality, args.invent_view1)
        sizes = {k: p.stat().st_size for k, p in tmp.items()}
        total = sum(sizes.values())
        print(f"{final['cifar']}: {n_cifar} images, {sizes['cifar'] / MIB:.1f} MiB")
        print(f"{final['lfw']}: {n_faces} faces at {args.size} px (crop {args.crop} made: train with --crop 1.0), "
              f"{sizes['lfw'] / MIB:.1f} MiB")
        if total > args.limit_mib * MIB:
            raise PackError(f"together {total / MIB:.1f} MiB, over the --limit-mib {args.limit_mib:g} MiB that may "
                            "travel: lower --size or --quality; nothing was kept")
        for k, path in final.items():
            os.replace(tmp[k], path)
        print(f"total {total / MIB:.1f} MiB of {args.limit_mib:g} MiB")
        return 0
    except PackError as e:
        print(f"pack_data: {e}", file=sys.stderr)
        return 2
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
