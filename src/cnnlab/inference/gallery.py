"""A gallery of people (one sub-folder of images per person) embedded by a face run, and searched by a face.

The embeddings are cached per run and gallery: the key covers the gallery's
files (names, sizes, modification times), the image size, crop and align mode,
and the run's best checkpoint, so adding a photo or training the run further
embeds the gallery again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data.cache import cache_dir, fingerprint, load_checked, save_checked
from cnnlab.data.faces import FaceSet, load_faces
from cnnlab.inference.runs import FaceRun
from cnnlab.losses import LpDistance

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: the gallery's faces are found as the run's align mode says; 3: and chosen as data.align.ranked


@dataclass(frozen=True, eq=False)
class Gallery:
    """The embeddings of a gallery's images: ``embeddings`` (N, D), ``labels`` (N,) into ``names`` (one per
    person), ``files`` (each image, relative to ``root``, the folder of people)."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    files: list[str]
    root: Path

    @classmethod
    def embedded(cls, run: FaceRun, folder: str | os.PathLike) -> "Gallery":
        """Every image under ``folder`` (one sub-folder per person) embedded by ``run``, from the cache when
        it holds them; images that cannot be decoded are skipped."""
        cfg = run.cfg
        faces = load_faces(folder, image_size=cfg.image_size, crop=cfg.crop, skip_bad=True, align=run.align)
        ckpt = run.run.best_checkpoint.resolve()
        st = ckpt.stat()
        key = fingerprint([faces.root / f for f in faces.files], faces.root, CACHE_VERSION, cfg.image_size,
                          cfg.crop, run.align, str(ckpt), st.st_size, st.st_mtime_ns, run.precision,
                          run.channels_last)
        path = cache_dir() / "faces-gallery" / f"{key}.pt"
        meta = {"version": CACHE_VERSION, "image_size": cfg.image_size, "crop": cfg.crop, "align": run.align,
                "embedding_dim": cfg.embedding_dim, "files": len(faces.files), "root": str(faces.root)}
        cached = load_checked(path, key=key, meta=meta, what="gallery cache",
                              check=lambda g: _cache_problem(g, faces, cfg.embedding_dim))
        if cached is not None:
            logger.info("gallery embeddings from the cache %s", path)
            return cls._of(cached)
        emb = run.embeddings(faces.images, desc="embedding the gallery", what="embeddings of the gallery")
        out = {"embeddings": emb, "labels": faces.labels, "names": list(faces.names), "files": list(faces.files),
               "root": str(faces.root)}
        save_checked(path, out, key=key, meta=meta, what="gallery cache")
        return cls._of(out)

    @classmethod
    def _of(cls, saved: dict) -> "Gallery":
        return cls(saved["embeddings"], saved["labels"], list(saved["names"]), list(saved["files"]),
                   Path(saved["root"]))

    @property
    def people(self) -> int:
        return len(self.names)

    def search(self, query: torch.Tensor, k: int, threshold: float) -> list[dict]:
        """The ``k`` people nearest to the embedding ``query`` (1, D), nearest first.

        A person's distance is that of their nearest gallery image. Each entry:
        ``rank``, ``name``, ``distance``, ``image`` (that nearest image,
        relative to :attr:`root`) and ``same_person`` (distance at most
        ``threshold``).
        """
        dist = LpDistance().pairwise(query, self.embeddings)[0]  # (N,)
        labels = self.labels
        best = torch.full((self.people,), float("inf")).scatter_reduce(0, labels, dist, reduce="amin")  # (P,)
        order = torch.argsort(best)[: min(k, self.people)]
        out = []
        for rank, p in enumerate(order.tolist(), 1):
            mine = torch.nonzero(labels == p).flatten()
            nearest = int(mine[torch.argmin(dist[mine])])
            d = float(best[p])
            out.append({"rank": rank, "name": self.names[p], "distance": d, "image": self.files[nearest],
                        "same_person": d <= threshold})
        return out


def _cache_problem(g: dict, faces: FaceSet, dim: int) -> str | None:
    """Whether cached gallery embeddings are those of ``faces``, the gallery as it is now (None: they are)."""
    if g.get("names") != list(faces.names) or g.get("files") != list(faces.files):
        return "its people or files are not those of the gallery"
    labels, emb = g.get("labels"), g.get("embeddings")
    if not isinstance(labels, torch.Tensor) or not torch.equal(labels, faces.labels):
        return "its labels are not those of the gallery"
    if not isinstance(emb, torch.Tensor) or not emb.is_floating_point() or emb.ndim != 2 \
            or tuple(emb.shape) != (len(labels), dim) or not bool(torch.isfinite(emb).all()):
        return f"its embeddings are not one finite {dim}-d vector per gallery image"
    return None
