"""A face run served: ``POST /verify``, ``POST /identify``, ``POST /embed`` and the gallery's thumbnails.

Every answer comes from :class:`cnnlab.inference.faces.FaceVerifier`, so the
service decides exactly as ``cnnlab faces verify`` and the Python API do. Only
the network call is shared: the verifier is given a network that goes through
a :class:`~cnnlab.serve.batching.Batcher`, whichever of its methods asks for
it, and that also sees the crops the network gets, which the page shows.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Iterator

import numpy as np
import torch
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.responses import Response
from PIL import Image

from cnnlab.data.align import centre_crop_advice
from cnnlab.data.images import BadImage, decode_rgb
from cnnlab.errors import CnnlabError, param
from cnnlab.inference.faces import FaceVerifier
from cnnlab.inference.images import stack
from cnnlab.serve.service import Service, api_errors, finite
from cnnlab.serve.batching import Batcher
from cnnlab.serve.uploads import UploadError

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 128
THUMBNAIL_CACHE = 1024  # thumbnails kept in memory, the least recently asked for dropped first


class RecordedNetwork:
    """A verifier's network that goes through ``batcher`` and records, per thread, what it is given."""

    def __init__(self, batcher: Batcher):
        self.batcher = batcher
        self._local = threading.local()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        seen = getattr(self._local, "seen", None)
        if seen is not None:
            seen.append(images)
        return self.batcher(images)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """The uint8 batches (N, 3, S, S) this thread embeds inside the block: the crops the network saw."""
        self._local.seen = []
        try:
            yield self._local.seen
        finally:
            self._local.seen = None


def check_gallery(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path, or a :class:`CnnlabError` when it is no folder."""
    path = Path(folder)
    if not path.is_dir():
        what = "not a folder" if path.exists() else "no such folder"
        raise CnnlabError(f"{param('gallery')} {folder}: {what} (one sub-folder of images per person)")
    return path


class GalleryRefused(Exception):
    """A gallery image the service will not send, with the HTTP status and the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Gallery:
    """A gallery folder embedded once, its images known by index: a client names a thumbnail by number, never
    by path. The gallery is read when the service starts; restart it to see images added since.

    A file is sent only when it lies inside the gallery folder, checked at every read and not only at start
    (a file may be replaced by a link after the service started): the file is opened first, then the path
    it was opened by is resolved and must lie inside the folder and be that very file (same device and
    inode as the open one). Whatever is swapped in before, during or after the open, what is read is the
    file that was checked. (O_NOFOLLOW alone would not do: it guards the last part of a path only, and
    would refuse links that stay inside the gallery, which the service serves.)
    """

    def __init__(self, folder: str | os.PathLike, fv: FaceVerifier):
        self.folder = check_gallery(folder)
        # What FaceVerifier.identify embeds (and caches) when given a folder, kept in memory: reading a large
        # gallery's cache for each request would cost more than the request.
        self.embedded = fv.gallery(self.folder)
        root, self.inside = self.embedded.root, self.folder.resolve()
        self.names: list[str] = list(self.embedded.files)
        self.files = [root / f for f in self.names]
        self.ids = {f: i for i, f in enumerate(self.names) if self._within(self.files[i].resolve())}
        self.servable = set(self.ids.values())
        self.people = self.embedded.people
        self._thumbnails: OrderedDict[tuple, bytes] = OrderedDict()  # (index, file identity) -> JPEG
        self._lock = threading.Lock()

    def _within(self, path: Path) -> bool:
        return path.is_relative_to(self.inside)

    def url(self, image: str) -> tuple[int | None, str | None]:
        i = self.ids.get(image)
        return (None, None) if i is None else (i, f"/gallery/{i}/thumbnail")

    def thumbnail(self, i: int) -> bytes:
        """Image ``i`` as a JPEG at most :data:`THUMBNAIL_SIDE` pixels a side, or a :class:`GalleryRefused`."""
        n = len(self.files)
        if not 0 <= i < n:
            raise GalleryRefused(404, f"no gallery image {i}: the gallery holds " +
                                 (f"{n} images, numbered 0 to {n - 1}" if n else "no images"))
        what = f"gallery image {i} ({self.names[i]})"
        if i not in self.servable:
            raise GalleryRefused(403, f"{what} is not served: it leads, through a link, to a file outside "
                                      "the gallery folder")
        with self._open(i, what) as f:
            st = os.fstat(f.fileno())
            key = (i, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # a changed file is read again
            with self._lock:
                if key in self._thumbnails:
                    self._thumbnails.move_to_end(key)
                    return self._thumbnails[key]
            data = self._jpeg(i, f, what)
        with self._lock:
            self._thumbnails[key] = data
            while len(self._thumbnails) > THUMBNAIL_CACHE:
                self._thumbnails.popitem(last=False)
        return data

    def _open(self, i: int, what: str):
        """Image ``i``'s file, opened, once it is known to be a regular file inside the gallery folder."""
        path = self.files[i]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO put in its place cannot block
        except FileNotFoundError:
            raise GalleryRefused(404, f"{what} no longer exists (the gallery is read when the service starts; "
                                      "restart it to see changes)") from None
        except OSError as e:
            raise GalleryRefused(404, f"{what} cannot be opened ({e.strerror})") from None
        f = os.fdopen(fd, "rb")
        try:
            real = path.resolve()
            if not self._within(real):
                raise GalleryRefused(403, f"{what} is not served: it now leads to a file outside the gallery "
                                          "folder (a link was put on its path since the service started)")
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                raise GalleryRefused(404, f"{what} is no longer a regular file")
            if not os.path.samestat(opened, os.stat(real)):
                raise GalleryRefused(409, f"{what} was replaced while it was being read; ask again")
        except (OSError, RuntimeError) as e:  # the path changed between the open and the checks (or loops)
            f.close()
            raise GalleryRefused(409, f"{what} was replaced while it was being read ({e}); ask again") from None
        except GalleryRefused:
            f.close()
            raise
        return f

    def _jpeg(self, i: int, f, what: str) -> bytes:
        try:
            img = decode_rgb(self.files[i], file=f)
        except BadImage as e:
            raise GalleryRefused(404, f"{what} {e.why}") from None
        img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()


def png_data_url(image: torch.Tensor) -> str:
    """A uint8 (3, H, W) image as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _centre_crop_advice():
    """A face that is not found, or a detector that is not installed, advised as a client (or whoever
    runs the service) can act on it: the client chooses the photo; the operator chooses --align."""
    return centre_crop_advice("send a photo in which the face is visible (this service looks for the face in each "
                              "image; started with --align center it would take the centre crop instead)",
                              "or start the service with --align center to take the centre crop instead")


class FaceService(Service):
    study = "faces"

    def __init__(self, run, gallery, *, device: str, max_batch: int, max_wait: float, allow_unfinished: bool,
                 align: str | None = None, **limits):
        super().__init__(run, **limits)
        own = FaceVerifier.from_run(run, device=device, align=align, allow_unfinished=allow_unfinished)
        self.batcher = Batcher(own.network, max_batch=max_batch, max_wait=max_wait, name="cnnlab-faces")
        self.network = RecordedNetwork(self.batcher)
        self.fv = own.with_network(self.network)
        with _centre_crop_advice():
            self.gallery = Gallery(gallery, self.fv) if gallery is not None else None
        if self.gallery is not None:
            logger.info("gallery %s: %d people, %d images", gallery, self.gallery.people, len(self.gallery.files))

    def close(self) -> None:
        self.batcher.close()

    def info(self) -> dict:
        cfg = self.fv.cfg
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
            with self.network.recording() as seen, api_errors(("a", "b")), _centre_crop_advice():
                r = self.fv.verify(*images)
        faces = r.get("faces") or [None, None]  # boxes and landmarks where the run detects faces
        out = {"distance": r["distance"], "threshold": r["threshold"], "same_person": bool(r["same_person"]),
               "faces": faces, "compared": r.get("compared") or [[f] for f in faces]}
        if crops:
            out["crops"] = [png_data_url(t) for t in self._pair_crops(seen, images, out)]
        return finite(out)

    def _pair_crops(self, seen: list[torch.Tensor], images: list, r: dict) -> torch.Tensor:
        """The two crops of the pair ``r`` answers for, among every face compared (recorded on their way to the
        network, in the order of ``r["compared"]``)."""
        ca, cb = r["compared"]
        if len(ca) == len(cb) == 1:
            return self._crops(seen, images, ("a", "b"))
        rows = torch.cat(seen) if seen else torch.empty(0)
        if len(rows) != len(ca) + len(cb):  # not recorded: the pair made ready again
            with api_errors(("a", "b")), _centre_crop_advice():
                each = self.fv.candidates(images)
            rows = stack(each[0] + each[1])
        return rows[[ca.index(r["faces"][0]), len(ca) + cb.index(r["faces"][1])]]

    def _crops(self, seen: list[torch.Tensor], images: list, fields: tuple[str, ...]) -> torch.Tensor:
        """The crops the network saw: recorded on their way to it, else made again by the API's preprocess."""
        if seen and sum(len(t) for t in seen) == len(images):
            return torch.cat(seen)
        with api_errors(fields), _centre_crop_advice():
            return self.fv.preprocess(images)

    def identify(self, image, k: int, crops: bool) -> dict:
        if self.gallery is None:
            raise UploadError(400, "this service has no gallery to identify faces in: start it with "
                                   "cnnlab serve RUN --gallery DIR (one sub-folder of images per person)")
        with self.batcher.expect():
            probe = self.read(image, "image")
            with self.network.recording() as seen, api_errors(("image",)), _centre_crop_advice():
                each = self.fv.identify_faces(probe, self.gallery.embedded, k)  # the gallery embedded at start
        for answer in each:
            for row in answer["matches"]:
                row["id"], row["thumbnail"] = self.gallery.url(row["image"])
        # matches: for the face the photo is of (the first); faces: for each face found, that one included
        out = {"threshold": self.fv.threshold, "k": k, "matches": each[0]["matches"], "face": each[0]["face"],
               "faces": each}
        if crops:
            out["crop"] = png_data_url(self._crops(seen, [probe], ("image",))[0])
        return finite(out)

    def embed(self, image) -> dict:
        with self.batcher.expect():
            img = self.read(image, "image")
            with api_errors(("image",)), _centre_crop_advice():
                e = self.fv.embed(img)[0]
        return finite({"embedding": e.tolist(), "dim": len(e),
                       "normalized": bool(self.fv.cfg.normalize_embeddings)})


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
        if s.gallery is None:
            raise UploadError(404, f"no gallery image {index}: this service has no gallery (start it with "
                                   "cnnlab serve RUN --gallery DIR)")
        try:
            data = s.gallery.thumbnail(index)
        except GalleryRefused as e:
            raise UploadError(e.status, e.message) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
