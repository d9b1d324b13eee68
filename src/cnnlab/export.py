"""``cnnlab faces export`` and ``cnnlab cifar export``: a run's network as one ONNX or TorchScript file.

The exported graph takes **uint8 images (B, 3, S, S), RGB, 0-255** and does
the input normalisation itself (to [0, 1], then the training mean and std), so
a user only decodes, crops and resizes as recorded, and cannot get the
normalisation wrong. The batch axis is dynamic. Faces: the output is the
embedding (B, D), already L2-normalised when ``l2_normalized`` says so; two
faces are the same person when the Euclidean distance of their embeddings is
at most ``threshold``. CIFAR: the output is the logits (B, C) over ``classes``
(softmax gives probabilities).

Everything a user needs to feed the file is in its metadata, one JSON object
(:func:`read_metadata`): in ONNX's ``metadata_props`` under the key
``cnnlab.json``, in TorchScript as the extra file ``cnnlab.json``.

ONNX goes through ``torch.onnx.export`` with the TorchScript-based exporter
(``dynamo=False``): it needs only the ``onnx`` package, while the
torch.export-based one also needs ``onnxscript``, and both give the same graph
for these convolutional networks.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from cnnlab import __version__
from cnnlab.errors import CnnlabError, TargetRefused, shown_path
from cnnlab.files import atomic_open, refuse_replacing
from cnnlab.run import RunDir

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "cnnlab.json"
OPSET = 17


class Uint8Input(nn.Module):
    """``net`` behind its input normalisation: uint8 (B, 3, S, S) in, ``net``'s output out."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() / 255.0 - self.mean) / self.std)


def _input(size: int, mean, std) -> dict:
    return {"name": "images", "dtype": "uint8", "shape": ["batch", 3, size, size], "channels": "RGB",
            "range": [0, 255], "normalized_inside": True, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std]}


def _face_preprocessing(cfg) -> dict:
    """How an image becomes the network's input in a face run, for a user outside cnnlab to do the same."""
    from cnnlab.data.align import DETECTOR, TEMPLATE_112, template

    crop = {"crop": cfg.crop, "crop_means": "the central square, crop x the shorter side, then resized",
            "resize": "bicubic"}
    out = {"decode": "8-bit RGB, EXIF orientation applied", "image_size": cfg.image_size, "align": cfg.align}
    if cfg.align == "center":
        return {**out, **crop}
    return {**out, "detector": DETECTOR,
            "alignment": "a similarity transform (least squares) of the five landmarks onto the template, "
                         "then an affine warp to image_size x image_size, edge pixels repeated outside the photo",
            "landmarks": ["left eye (image left)", "right eye", "nose tip", "left mouth corner", "right mouth corner"],
            "template": [[round(float(x), 4), round(float(y), 4)] for x, y in template(cfg.image_size)],
            "template_112": TEMPLATE_112.tolist(),
            "no_face": ("the centre crop below" if cfg.align == "auto" else "the image is refused"), **crop}


def face_export(run_dir: str | os.PathLike, allow_unfinished: bool = False) -> tuple[nn.Module, dict]:
    """The embedding network of a finished face run (best checkpoint, CPU, fp32) and its metadata."""
    from cnnlab.inference.runs import open_face_run

    r = open_face_run(run_dir, "cpu", allow_unfinished=allow_unfinished)
    run, model, cfg, threshold = r.run, r.model, r.cfg, r.threshold
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    meta = {
        "cnnlab_version": __version__, "study": "faces", "run": str(run.path), "checkpoint": "best",
        "backbone": cfg.backbone,
        "input": _input(cfg.image_size, mean, std),
        "preprocessing": _face_preprocessing(cfg),
        "output": {"name": "embeddings", "shape": ["batch", cfg.embedding_dim]},
        "l2_normalized": bool(cfg.normalize_embeddings), "distance": "euclidean", "threshold": threshold,
        "same_person": "distance <= threshold",
    }
    return Uint8Input(model.float().eval(), mean, std).eval(), meta


def cifar_export(run_dir: str | os.PathLike, allow_unfinished: bool = False) -> tuple[nn.Module, dict]:
    """The classifier of a finished CIFAR run (best checkpoint, CPU, fp32) and its metadata."""
    from cnnlab.data.augment import CIFAR10_MEAN, CIFAR10_STD
    from cnnlab.data.cifar10 import IMAGE_SIZE
    from cnnlab.inference.runs import open_cifar_run

    clf = open_cifar_run(run_dir, device="cpu", allow_unfinished=allow_unfinished)
    model = clf.model
    meta = {
        "cnnlab_version": __version__, "study": "cifar", "run": str(clf.run.path), "checkpoint": "best",
        "blocks": model.variant, "width": model.width,
        "input": _input(IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD),
        "preprocessing": {"decode": "8-bit RGB", "crop": None, "resize": "bicubic", "image_size": IMAGE_SIZE},
        "output": {"name": "logits", "shape": ["batch", len(clf.classes)], "softmax": "gives the probabilities"},
        "classes": clf.classes,
    }
    return Uint8Input(model.float().eval(), CIFAR10_MEAN, CIFAR10_STD).eval(), meta


def export_run(study: str, run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, *,
               force: bool = False, allow_unfinished: bool = False) -> dict:
    """Write the network of ``run_dir`` (a ``study`` run) to ``out`` in ``fmt``; its metadata is returned.

    ``out`` is written whole or not at all. Something already there is kept
    (:class:`TargetRefused`), but for a regular file when ``force``; a link, a
    device, a FIFO, a folder and anything in a run's ``checkpoints/`` are never
    replaced. ``out`` is checked before the export and again right before the
    finished file takes its name. A run that has not finished training is
    refused unless ``allow_unfinished``.
    """
    if fmt not in FORMATS:
        raise CnnlabError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _check_out(out, force)  # before minutes of tracing, a refusal costs nothing
    net, meta = (face_export if study == "faces" else cifar_export)(run_dir, allow_unfinished)
    meta["format"] = fmt
    size = meta["input"]["shape"][-1]
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        # Both exporters announce their successors; the files they write are what is tested.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        data = _onnx_bytes(net, example, meta) if fmt == "onnx" else None
        traced = torch.jit.trace(net, example) if fmt == "torchscript" else None
        # Without force nothing at out is replaced (a hard link takes the name); with it, only a
        # regular file, as _check_out finds just before the rename.
        with atomic_open(out, "wb", exclusive=not force, check=lambda: _check_out(out, force)) as f:
            if data is not None:
                f.write(data)
            else:
                torch.jit.save(traced, f, _extra_files={METADATA_KEY: json.dumps(meta)})
    return meta


def _check_out(out: str | os.PathLike, force: bool = False) -> None:
    """Raise :class:`TargetRefused` when ``out`` may not take an exported file (see :func:`export_run`)."""
    run = _run_of(out)
    if run is not None:
        raise TargetRefused(out, f"is inside the checkpoints folder of the run {shown_path(run)}; "
                                 "an export is never written there")
    refuse_replacing(out, replace_file=force)


def _run_of(out: str | os.PathLike) -> Path | None:
    """The run folder whose ``checkpoints/`` holds ``out`` (any depth, links resolved), or None.

    A run folder is known by its ``config.yaml``: a run whose first epoch has
    not ended yet has no checkpoints folder, and is protected as well.
    """
    for folder in Path(os.path.realpath(out)).parents:
        if folder.name == "checkpoints" and RunDir(folder.parent).exists():
            return folder.parent
    return None


def _onnx_bytes(net: nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    try:
        import onnx
    except ImportError:
        raise CnnlabError("ONNX export needs the onnx package: pip install onnx (or cnnlab[export])") from None
    buf = io.BytesIO()
    out_name = meta["output"]["name"]
    torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=OPSET, input_names=["images"],
                      output_names=[out_name], dynamic_axes={"images": {0: "batch"}, out_name: {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name, proto.producer_version = "cnnlab", __version__
    return proto.SerializeToString()


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a file :func:`export_run` wrote, ONNX or TorchScript."""
    path = Path(path)
    if path.suffix.lower() == ".onnx" or not _is_zip(path):
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if METADATA_KEY not in props:
            raise CnnlabError(f"{path} holds no {METADATA_KEY} metadata; was it written by cnnlab ... export?")
        return json.loads(props[METADATA_KEY])
    with zipfile.ZipFile(path) as z:  # a TorchScript file: extra files lie in <archive>/extra/
        names = [n for n in z.namelist() if n.endswith(f"/extra/{METADATA_KEY}")]
        if not names:
            raise CnnlabError(f"{path} holds no {METADATA_KEY} extra file; was it written by cnnlab ... export?")
        return json.loads(z.read(names[0]))


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
