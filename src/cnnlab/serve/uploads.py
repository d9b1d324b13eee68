"""Uploaded images, decoded safely: what the client says a file is counts for nothing.

An upload is an image when PIL decodes it; its name and content type are not
read. It is decoded as every image file cnnlab reads is
(:func:`cnnlab.data.images.decode_rgb`): before any pixel is decoded the
header's size is checked against the same limits (a pixel limit, PIL's
decompression-bomb limit by default, and an aspect ratio), so a small file
that claims a huge or absurdly long picture costs nothing. Every problem is an
:class:`UploadError` with the HTTP status that fits it and a message naming
the form field.
"""

from __future__ import annotations

import io

from PIL import Image

from cnnlab.data.images import MAX_IMAGE_PIXELS, BadImage, NotAnImage, TooLarge, decode_rgb


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
        return decode_rgb(f"field '{field}'", file=io.BytesIO(data), max_pixels=max_pixels)
    except NotAnImage:
        raise UploadError(422, f"field '{field}': not an image file PIL can read (the content is sniffed; the "
                               "file's name and content type are ignored)") from None
    except BadImage as e:
        raise UploadError(413 if isinstance(e, TooLarge) else 422, f"field '{field}': the image {e.why}") from None
