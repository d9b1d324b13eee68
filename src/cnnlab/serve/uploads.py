"""Uploaded images, decoded safely: what the client says a file is counts for nothing.

An upload is an image when PIL decodes it; its name and content type are not
read. Before any pixel is decoded the header's size is checked against the
limits cnnlab's file decoding applies (:func:`cnnlab.data.images.size_problem`:
a pixel limit, PIL's decompression-bomb limit by default, and an aspect ratio),
so a small file that claims a huge or absurdly long picture costs nothing. Every
problem is an :class:`UploadError` with the HTTP status that fits it and a
message naming the form field.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from cnnlab.data.images import MAX_IMAGE_PIXELS, MIN_SIDE, _to_rgb, megapixels, size_problem, upright


class UploadError(Exception):
    """A request the service refuses, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, field: str, max_bytes: int, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The upload ``data`` of form field ``field`` as an upright 8-bit RGB image, or an :class:`UploadError`."""
    if len(data) > max_bytes:
        raise UploadError(413, f"field '{field}': the file is {len(data):,} bytes, larger than the limit of "
                               f"{max_bytes:,} bytes (--max-upload-mb)")
    if not data:
        raise UploadError(422, f"field '{field}': the file is empty")
    try:
        with warnings.catch_warnings():
            # PIL warns between its limit and twice it, and raises above; the explicit check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        w, h = img.size
        problem = size_problem(w, h, max_pixels)
        if problem:
            raise UploadError(413 if w * h > max_pixels else 422, f"field '{field}': the image {problem}")
        img.load()  # decodes now, so a truncated file fails here
    except UploadError:
        raise
    except Image.DecompressionBombError as e:
        raise UploadError(413, f"field '{field}': the image is larger than the limit of {megapixels(max_pixels)} "
                               f"({e})") from None
    except UnidentifiedImageError:
        raise UploadError(422, f"field '{field}': not an image file PIL can read (the content is sniffed; the "
                               "file's name and content type are ignored)") from None
    except Exception as e:  # noqa: BLE001 -- a damaged file: OSError, SyntaxError, struct.error, ...
        raise UploadError(422, f"field '{field}': the image cannot be decoded ({e})") from None
    img = upright(img, f"field '{field}'")
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise UploadError(422, f"field '{field}': the image is {w}x{h} pixels, smaller than {MIN_SIDE}x{MIN_SIDE}")
    return _to_rgb(img)
