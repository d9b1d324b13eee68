"""Decoding image files safely, for the image-folder CIFAR layout and face folders.

Every mode PIL reads is turned into 8-bit RGB the way a user would expect:
grayscale is repeated into three channels, alpha is dropped, palettes are
expanded, 16-bit images are scaled down (not clipped), and a photo stored
rotated or mirrored with an EXIF orientation tag (as phones store portrait
shots) is turned upright, as every image viewer shows it. A file that cannot be
decoded (truncated, corrupted, not an image, too small to be a picture) is a
:class:`BadImage` naming the file.

Two limits, checked on the header's size before any pixel is decoded, keep
the work one image costs bounded; the service's upload decoder applies the same
ones (:func:`size_problem`): at most :data:`MAX_IMAGE_PIXELS` pixels, and no
side more than :data:`MAX_ASPECT` times the other.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import DataError, param

logger = logging.getLogger(__name__)

MIN_SIDE = 8
"""Images smaller than this on either side are refused: they hold no picture worth training on."""

MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Images with more pixels are refused (PIL's decompression-bomb limit, about 89 megapixels): checked from a
file's header before any pixel is decoded, so a small file that claims a huge picture costs nothing."""

MAX_ASPECT = 20.0
"""Images whose longer side is more than this many times the shorter are refused. The longest photos cameras
make, phones' panoramas, are usually well under 10:1; a picture 20 times longer than it is high is a strip or
a banner with no face worth finding, and the detector pays for it as for a square of its longer side."""

_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


class BadImage(DataError):
    """An image that cannot be used, naming it: ``path``, and ``why`` (``"is not an image file ..."``)."""

    def __init__(self, path: str | os.PathLike, why: str):
        self.path = Path(path)
        self.why = why
        super().__init__(f"{self.path}: {why}")


class NotAnImage(BadImage):
    """Data no decoder recognises as an image."""


class TooLarge(BadImage):
    """An image over the pixel limit, refused from its header before its pixels are decoded."""


def list_files(folder: str | os.PathLike) -> list[Path]:
    """Regular, non-hidden files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower() not in _IGNORED_NAMES
    )


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, whatever its mode (see the module's description)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        # 16-bit data fills 0..65535; 32-bit "I" images from 16-bit PNGs do too.
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
        a = np.clip(np.rint((a - lo) / max(hi - lo, 1e-12) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")  # expands the palette, keeps transparency for the next step
    if img.mode in ("RGBA", "LA", "PA"):
        return img.convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def upright(img: Image.Image, path: str | os.PathLike) -> Image.Image:
    """``img`` turned as its EXIF orientation tag (2-8) says, so the pixels are the ones a viewer shows."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 -- a damaged EXIF block; the pixels themselves are fine
        logger.warning("%s: EXIF orientation unreadable (%s); using the pixels as stored", path, e)
        return img


def megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


def aspect_problem(w: int, h: int) -> str | None:
    """Why an image of ``w`` x ``h`` pixels is too long and thin to use ("is ..."), or None."""
    ratio = max(w, h) / max(1, min(w, h))
    if ratio > MAX_ASPECT:
        return (f"is {w}x{h} pixels, an aspect ratio of {ratio:.1f}:1, more than the {MAX_ASPECT:g}:1 "
                "accepted (no photo is that long and thin)")
    return None


def size_problem(w: int, h: int, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why an image of ``w`` x ``h`` pixels is too costly to use ("is ..."), or None: the pixel limit, then the
    aspect ratio (:func:`aspect_problem`).

    Both are the same for the image turned by its EXIF orientation, so they
    are checked on the stored size, before decoding.
    """
    if w * h > max_pixels:
        return f"is {w}x{h} pixels ({megapixels(w * h)}), more than the limit of {megapixels(max_pixels)}"
    return aspect_problem(w, h)


def check_size(size: tuple[int, int], name: str | os.PathLike, min_side: int = MIN_SIDE,
               max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """A :class:`BadImage` naming ``name`` unless an image of ``size`` (width, height) is within
    :func:`size_problem`'s limits and at least ``min_side`` on each side: the limits of every image cnnlab
    takes, from a file or from the Python API."""
    w, h = size
    problem = size_problem(w, h, max_pixels)
    if problem:
        raise (TooLarge if w * h > max_pixels else BadImage)(name, problem)
    if min(w, h) < min_side:
        raise BadImage(name, f"is {w}x{h} pixels, smaller than {min_side}x{min_side}")


def decode_rgb(path: str | os.PathLike, min_side: int = MIN_SIDE, file=None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` and return a fully decoded, upright 8-bit RGB image, or raise :class:`BadImage`.

    An image over the limits of :func:`size_problem` (at most ``max_pixels``) is refused from its header,
    before its pixels are decoded (:class:`TooLarge`); data that is no image is a :class:`NotAnImage`.
    ``file``: a binary file already opened (and checked) by the caller, or one in memory, read instead of
    ``path``, which then only names it in messages.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns between its limit and twice it, and raises above; check_size decides, from the header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path if file is None else file)
        with img:
            check_size(img.size, path, min_side=0, max_pixels=max_pixels)
            img.load()  # decodes now, so a truncated file fails here and not later
            img = upright(img, path)
            check_size(img.size, path, min_side, max_pixels)
            return to_rgb(img)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:  # over twice the limit: PIL refuses it before check_size can
        raise TooLarge(path, f"is larger than the limit of {megapixels(max_pixels)} ({e})") from None
    except UnidentifiedImageError:
        raise NotAnImage(path, "is not an image file PIL can read") from None
    except Exception as e:  # noqa: BLE001 -- a damaged file: OSError, SyntaxError, struct.error, ...
        raise BadImage(path, f"cannot be decoded ({e})") from None


def resize_exact(img: Image.Image, size: int) -> Image.Image:
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)


def center_crop_resize(img: Image.Image, size: int, crop: float = 1.0) -> Image.Image:
    """Crop the central square (``crop`` of the shorter side) and resize it to ``size``."""
    w, h = img.size
    side = max(1, int(round(min(w, h) * crop)))
    left, top = (w - side) // 2, (h - side) // 2
    return resize_exact(img.crop((left, top, left + side, top + side)), size)


class Skipped(BadImage):
    """An image that decodes but that a transform does not use (a photo without a face): never fatal."""


def load_many(
    paths: Sequence[Path],
    transform: Callable[..., Image.Image],
    skip_bad: bool = False,
    progress: Callable | None = None,
    min_side: int = MIN_SIDE,
    with_path: bool = False,
) -> tuple[np.ndarray, list[int], list[BadImage]]:
    """Decode ``paths`` (in threads), apply ``transform`` and stack to uint8 (N, 3, H, W).

    Returns the stacked images, the indices into ``paths`` that were kept, and
    the bad files. Without ``skip_bad`` the first bad file (in ``paths`` order)
    is raised; a transform that raises :class:`Skipped` leaves the image out
    in either case (the caller reports those). ``with_path``: the transform
    is called as ``transform(image, path)``.
    """

    def one(p: Path) -> np.ndarray | BadImage:
        try:
            img = decode_rgb(p, min_side=min_side)
            return np.asarray(transform(img, p) if with_path else transform(img), dtype=np.uint8)
        except BadImage as e:
            return e

    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(one, paths, chunksize=64)
        if progress is not None:
            results = progress(results, total=len(paths))
        results = list(results)

    bad = [r for r in results if isinstance(r, BadImage)]
    fatal = [r for r in bad if not isinstance(r, Skipped)]
    if fatal and not skip_bad:
        raise DataError(f"{fatal[0]} (use {param('skip_bad_images')} to skip such files)")
    kept = [i for i, r in enumerate(results) if not isinstance(r, BadImage)]
    if fatal:
        shown = ", ".join(str(b.path) for b in fatal[:10])
        more = f" and {len(fatal) - 10} more" if len(fatal) > 10 else ""
        logger.warning("skipped %d bad image file(s): %s%s", len(fatal), shown, more)
    if not kept:
        return np.zeros((0, 3, 0, 0), dtype=np.uint8), kept, bad
    shapes = {results[i].shape for i in kept}
    if len(shapes) != 1:
        raise DataError(f"decoded images have different shapes {sorted(shapes)}; the transform must fix the size")
    arr = np.stack([results[i] for i in kept]).transpose(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
    return np.ascontiguousarray(arr), kept, bad
