"""A face run served: ``POST /verify``, ``POST /identify``, ``POST /embed`` and the gallery's thumbnails.

Every answer comes from :class:`cnnlab.api.FaceVerifier`, so the service
decides exactly as ``cnnlab faces verify`` and the Python API do. Only the
network call is shared: the verifier's opened run is wrapped so that its
``embed`` goes through a :class:`~cnnlab.serve.batching.Batcher`, whichever
API method asks for it (that wrapper also sees the crops the network gets,
which the page shows).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Iterator

import numpy as np
import torch
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.responses import Response
from PIL import Image

from cnnlab.errors import CnnlabError
from cnnlab.faces.verify import check_k, nearest_people
from cnnlab.serve.service import Service, api_errors, finite
from cnnlab.serve.batching import Batcher
from cnnlab.serve.uploads import UploadError

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 128


class _BatchedRun:
    """A :class:`cnnlab.faces.verify.FaceRun` whose ``embed`` is batched with other requests' and recorded."""

    def __init__(self, inner, batcher: Batcher):
        self._inner, self._batcher = inner, batcher
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        seen = getattr(self._local, "seen", None)
        if seen is not None:
            seen.append(images)
        return self._batcher(images)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """The uint8 batches (N, 3, S, S) this thread embeds inside the block: the crops the network saw."""
        self._local.seen = []
        try:
            yield self._local.seen
        finally:
            self._local.seen = None


class Gallery:
    """A gallery folder embedded once, its images known by index: a client names a thumbnail by number, never
    by path. The gallery is read when the service starts; restart it to see images added since."""

    def __init__(self, folder: str | os.PathLike, fv):
        from cnnlab.faces.verify import _gallery

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CnnlabError(f"--gallery {folder}: no such folder (one sub-folder of images per person)")
        r = fv._run
        # What FaceVerifier.identify embeds and caches on every call, kept in memory: reading a large
        # gallery's cache for each request would cost more than the request.
        self.embedded = _gallery(r.run, r.model, r.cfg, self.folder, r.device, r.precision, r.channels_last,
                                 r.align)
        root, inside = Path(self.embedded["root"]), self.folder.resolve()
        self.files = [(root / f).resolve() for f in self.embedded["files"]]
        self.ids = {f: i for i, f in enumerate(self.embedded["files"]) if self.files[i].is_relative_to(inside)}
        self.servable = set(self.ids.values())
        self.people = len(self.embedded["names"])
        self.thumbnail = lru_cache(maxsize=1024)(self._thumbnail)

    def url(self, image: str) -> tuple[int | None, str | None]:
        i = self.ids.get(image)
        return (None, None) if i is None else (i, f"/gallery/{i}/thumbnail")

    def _thumbnail(self, i: int) -> bytes:
        from cnnlab.data.images import decode_rgb

        img = decode_rgb(self.files[i])
        img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()


def png_data_url(image: torch.Tensor) -> str:
    """A uint8 (3, H, W) image as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class FaceService(Service):
    study = "faces"

    def __init__(self, run, gallery, *, device: str, max_batch: int, max_wait: float, allow_unfinished: bool,
                 **limits):
        from cnnlab.api import FaceVerifier

        super().__init__(run, **limits)
        self.fv = FaceVerifier.from_run(run, device=device, allow_unfinished=allow_unfinished)
        self.batcher = Batcher(self.fv._run.embed, max_batch=max_batch, max_wait=max_wait, name="cnnlab-faces")
        self.fv._run = self.batched = _BatchedRun(self.fv._run, self.batcher)
        self.gallery = Gallery(gallery, self.fv) if gallery is not None else None
        if self.gallery is not None:
            logger.info("gallery %s: %d people, %d images", gallery, self.gallery.people, len(self.gallery.files))

    def close(self) -> None:
        self.batcher.close()

    def info(self) -> dict:
        cfg = self.fv._run.cfg
        model = {"backbone": cfg.backbone, "embedding_dim": cfg.embedding_dim, "image_size": cfg.image_size,
                 "crop": cfg.crop, "align": self.fv.align, "normalize_embeddings": cfg.normalize_embeddings, "loss": cfg.loss,
                 "margin": cfg.margin, "parameters": sum(p.numel() for p in self.fv.model.parameters()),
                 "device": str(self.fv.device)}
        gallery = None if self.gallery is None else {"people": self.gallery.people, "images": len(self.gallery.files)}
        return finite({"threshold": self.fv.threshold, "model": model, "gallery": gallery,
                       "batching": self.batcher.stats()})

    def verify(self, a, b, crops: bool) -> dict:
        with self.batcher.expect():
            images = [self.read(a, "a"), self.read(b, "b")]
            with self.batched.recording() as seen, api_errors(("a", "b")):
                r = self.fv.verify(*images)
        faces = r.get("faces") or [None, None]  # boxes and landmarks where the run detects faces
        out = {"distance": r["distance"], "threshold": r["threshold"], "same_person": bool(r["same_person"]),
               "faces": faces}
        if crops:
            out["crops"] = [png_data_url(t) for t in self._crops(seen, images, ("a", "b"))]
        return finite(out)

    def _crops(self, seen: list[torch.Tensor], images: list, fields: tuple[str, ...]) -> torch.Tensor:
        """The crops the network saw: recorded on their way to it, else made again by the API's preprocess."""
        if seen and sum(len(t) for t in seen) == len(images):
            return torch.cat(seen)
        with api_errors(fields):
            return self.fv.preprocess(images)

    def identify(self, image, k: int, crops: bool) -> dict:
        if self.gallery is None:
            raise UploadError(400, "this service has no gallery to identify faces in: start it with "
                                   "cnnlab serve RUN --gallery DIR (one sub-folder of images per person)")
        with self.batcher.expect():
            probe = self.read(image, "image")
            with self.batched.recording() as seen, api_errors(("image",)):
                check_k(k)  # as FaceVerifier.identify does, on the gallery embedded at start
                rows = nearest_people(self.fv.embed(probe), self.gallery.embedded, k, self.fv.threshold)
        for row in rows:
            row["id"], row["thumbnail"] = self.gallery.url(row["image"])
        out = {"threshold": self.fv.threshold, "k": k, "matches": rows}
        if crops:
            out["crop"] = png_data_url(self._crops(seen, [probe], ("image",))[0])
        return finite(out)

    def embed(self, image) -> dict:
        with self.batcher.expect():
            img = self.read(image, "image")
            with api_errors(("image",)):
                e = self.fv.embed(img)[0]
        return finite({"embedding": e.tolist(), "dim": len(e),
                       "normalized": bool(self.fv._run.cfg.normalize_embeddings)})


ImageFile = Annotated[UploadFile, File(description="an image file (any format PIL reads)")]
Crops = Annotated[bool, Query(description="also return the aligned face crops the network saw, as PNG data URLs")]


def add_face_routes(app: FastAPI, s: FaceService) -> None:
    @app.post("/verify", summary="are the faces in images a and b the same person?")
    def verify(a: ImageFile, b: ImageFile, crops: Crops = False) -> dict:
        return s.verify(a, b, crops)

    @app.post("/identify", summary="the k gallery people nearest to the face in image (needs --gallery)")
    def identify(image: ImageFile, k: Annotated[int, Query(ge=1, le=100)] = 5, crops: Crops = False) -> dict:
        return s.identify(image, k, crops)

    @app.post("/embed", summary="the embedding of the face in image")
    def embed(image: ImageFile) -> dict:
        return s.embed(image)

    @app.get("/gallery/{index}/thumbnail", summary="a gallery image, small, by its index in /identify's matches")
    def thumbnail(index: int) -> Response:
        if s.gallery is None or not 0 <= index < len(s.gallery.files) or index not in s.gallery.servable:
            raise UploadError(404, f"no gallery image {index}" + ("" if s.gallery is None else
                                                                   f" (it holds {len(s.gallery.files)})"))
        try:
            data = s.gallery.thumbnail(index)
        except CnnlabError as e:
            raise UploadError(404, f"gallery image {index} cannot be read ({e.__class__.__name__})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
