"""Uploaded images, decoded safely: what the client says a file is counts for nothing.

An upload is an image when PIL decodes it; its name and content type are not
read. Before any pixel is decoded the header's size is checked against a pixel
limit (PIL's decompression-bomb limit, which cnnlab's file decoding also
relies on), so a small file that claims a huge picture costs nothing. Every
problem is an :class:`UploadError` with the HTTP status that fits it and a
message naming the form field.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from cnnlab.data.images import MIN_SIDE, _to_rgb, upright

MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
"""PIL's decompression-bomb limit (about 89 megapixels): larger uploads are refused before decoding."""


class UploadError(Exception):
    """A request the service refuses, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


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
        if w * h > max_pixels:
            raise UploadError(413, f"field '{field}': the image is {w}x{h} pixels ({_megapixels(w * h)}), more "
                                   f"than the limit of {_megapixels(max_pixels)}")
        img.load()  # decodes now, so a truncated file fails here
    except UploadError:
        raise
    except Image.DecompressionBombError as e:
        raise UploadError(413, f"field '{field}': the image is larger than the limit of {_megapixels(max_pixels)} "
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
