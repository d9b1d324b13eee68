"""A CIFAR run served: ``POST /predict``, the top-k classes of one or more images.

Answers come from :class:`cnnlab.inference.cifar.Classifier`; only its
network call is shared between concurrent requests: the classifier is given a
network that goes through a :class:`~cnnlab.serve.batching.Batcher`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, File, Query, UploadFile

from cnnlab.inference.cifar import Classifier
from cnnlab.serve.service import Service, api_errors, finite
from cnnlab.serve.batching import Batcher
from cnnlab.serve.uploads import UploadError


class CifarService(Service):
    study = "cifar"

    def __init__(self, run, *, device: str, max_batch: int, max_wait: float, allow_unfinished: bool, **limits):
        super().__init__(run, **limits)
        own = Classifier.from_run(run, device=device, allow_unfinished=allow_unfinished)
        self.batcher = Batcher(own.network, max_batch=max_batch, max_wait=max_wait, name="cnnlab-cifar")
        self.classifier = own.with_network(self.batcher)

    def close(self) -> None:
        self.batcher.close()

    def info(self) -> dict:
        cfg = self.run.read_config()
        model = {"blocks": cfg.get("blocks"), "width": cfg.get("width"),
                 "parameters": sum(p.numel() for p in self.classifier.model.parameters()),
                 "device": str(self.classifier.device)}
        return finite({"classes": self.classifier.classes, "model": model, "batching": self.batcher.stats()})

    def predict(self, images: list[UploadFile], k: int) -> dict:
        if len(images) > self.max_images:
            raise UploadError(413, f"field 'images': {len(images)} images, more than the {self.max_images} one "
                                   "request may hold")
        fields = [f"images[{i}]" for i in range(len(images))]
        with self.batcher.expect():
            decoded = [self.read(f, name) for f, name in zip(images, fields)]
            with api_errors(fields):
                results = self.classifier.predict(decoded, k=k)  # a list: decoded is one
        return finite({"k": k, "predictions": [{"index": i, "filename": f.filename, "top": r["top"]}
                                               for i, (f, r) in enumerate(zip(images, results))]})


def add_cifar_routes(app: FastAPI, s: CifarService) -> None:
    @app.post("/predict", summary="the top-k classes of each image (repeat the field for several)")
    def predict(images: Annotated[list[UploadFile], File(description="one or more image files")],
                k: Annotated[int, Query(ge=1, le=100)] = 5) -> dict:
        return s.predict(images, k)
