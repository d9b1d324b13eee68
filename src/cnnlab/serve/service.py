"""What both studies' endpoints share, without FastAPI: which study a run is, the base of a study's service,
how the Python API's errors and non-finite numbers reach a client."""

from __future__ import annotations

import logging
import os
import re
from typing import Sequence

from cnnlab.errors import CnnlabError, DataError, NonFiniteOutput
from cnnlab.files import json_ready
from cnnlab.run import RunDir
from cnnlab.serve.uploads import UploadError, decode_upload

MB = 1024 * 1024
logger = logging.getLogger(__name__)

MIN_NETWORK_TOKEN = 16
"""Characters (other than whitespace) a token needs when other machines can connect: guessing it must not pay."""
STUDY_NAMES = {"faces": "a face run", "cifar": "a CIFAR run"}
# Every study's endpoints, so a request for another study's endpoint is told what this run serves.
ENDPOINTS = {"faces": ("POST /verify", "POST /identify", "POST /embed"), "cifar": ("POST /predict",)}


def run_study(path: str | os.PathLike) -> str:
    """"faces" or "cifar": the study of the run folder at ``path``; a :class:`CnnlabError` for anything else."""
    run = RunDir(path)
    if not run.path.exists():
        raise CnnlabError(f"{run.path} does not exist; give the folder of a finished run")
    if not run.path.is_dir():
        raise CnnlabError(f"{run.path} is not a folder; give the folder of a finished run")
    if not run.config_path.is_file():
        raise CnnlabError(f"{run.path} holds no cnnlab run (no config.yaml); give the folder of a run made by "
                          "cnnlab faces train or cnnlab cifar train")
    study = run.study()
    if study is None:
        raise CnnlabError(f"{run.config_path} is neither a face run's config (no 'backbone') nor a CIFAR run's "
                          "(no 'blocks'); cnnlab serve serves runs made by cnnlab faces train or cnnlab cifar train")
    return study


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent as ``Authorization: Bearer TOKEN`` (None: it can). HTTP drops the
    whitespace around a header's value and no header may hold control characters, so such a token could
    never be given back."""
    if token != token.strip():
        return "starts or ends with whitespace, which an HTTP header cannot carry"
    bad = sorted({c for c in token if (ord(c) < 32 and c != "\t") or ord(c) == 127})
    if bad:
        return f"holds control characters ({', '.join(map(repr, bad))}), which an HTTP header cannot carry"
    return None


class Service:
    """What a study's endpoints share: the run, the limits, and how uploads and API errors are answered."""

    study: str

    def __init__(self, run: str | os.PathLike, max_upload_bytes: int, max_images: int, max_image_pixels: int):
        self.run = RunDir(run)
        self.max_upload_bytes, self.max_images, self.max_image_pixels = max_upload_bytes, max_images, max_image_pixels

    def read(self, upload, field: str):
        """The form field's upload as an RGB PIL image (see :func:`cnnlab.serve.uploads.decode_upload`)."""
        data = upload.file.read(self.max_upload_bytes + 1)  # no more than it takes to know it is too large
        if len(data) > self.max_upload_bytes:
            size = getattr(upload, "size", None)
            raise UploadError(413, f"field '{field}': the file is {f'{size:,} bytes, ' if size else ''}larger than "
                                   f"the limit of {self.max_upload_bytes:,} bytes (--max-upload-mb)")
        return decode_upload(data, field, self.max_upload_bytes, self.max_image_pixels)

    def info(self) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        pass


_NO_ANSWER = ("the run's network gave NaN or infinite outputs for these images, so there is no answer (no distance, "
              "verdict or class); the service log has the details")


def api_errors(fields: Sequence[str]):
    """Context: a :class:`CnnlabError` of the Python API becomes an :class:`UploadError`, its images named by field.

    The API names an image it was given as a PIL image ``image 0``, ``image 1``;
    the client knows them by their form fields. A network that gives NaN is no
    fault of the request: a 500 that says there is no answer, never a verdict.
    """
    return _ApiErrors(fields)


class _ApiErrors:
    def __init__(self, fields: Sequence[str]):
        self.fields = list(fields)

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is None or not isinstance(e, CnnlabError):
            return False
        if isinstance(e, NonFiniteOutput):  # the message names files of the server: logged, not sent
            logger.error("%s", e)
            raise UploadError(500, _NO_ANSWER) from None

        def field(m: re.Match) -> str:
            i = int(m.group(1))
            return f"field '{self.fields[i]}'" if i < len(self.fields) else m.group(0)

        message = re.sub(r"\bimage (\d+)\b", field, str(e))
        raise UploadError(422 if isinstance(e, DataError) else 400, message) from None


# Every answer as plain JSON: non-finite floats as None (JSON has no NaN), numpy numbers as Python's.
finite = json_ready
