"""Train a Siamese face-verification network into a run folder (``cnnlab faces train``).

``train(cfg, out)`` decodes the face set once (cached), splits it by
``--protocol`` (:mod:`cnnlab.faces.protocol`), and trains backbone + embedding
head on the engine shared with the CIFAR study (:func:`cnnlab.engine.fit`).
The loss (:class:`cnnlab.losses.FaceLoss`, chosen by ``--loss``) decides
what a batch holds: fresh pairs every epoch for the contrastive loss, P x K
batches with in-batch mining for the triplet loss, random batches of images
and their person for the margin losses (CosFace, ArcFace, sub-center ArcFace),
whose weight per training person trains with the network at the head's rate.
Images stay uint8 in memory; each batch is indexed, moved to the device,
augmented (:func:`cnnlab.data.augment.face_train_transform`) and normalised
there.

The run folder is as for CIFAR: ``config.yaml``; ``metrics.csv`` with one row
per epoch (train loss, validation loss and ROC AUC, learning rate, seconds),
plus an epoch-0 row scoring the untrained network; ``checkpoints/last.pt``
(model, a margin loss's weights, optimizer, scheduler, RNG states, history:
``--resume`` ends exactly where the uninterrupted run would);
``checkpoints/best.pt`` (the network alone) by validation ROC AUC (epoch 0
included, so training can never make the kept model worse on validation);
``summary.json``; ``test_pairs.csv`` and ``test_embeddings.pt``, from which
every figure is drawn again without the model.

The test is scored once, with the best checkpoint (:func:`test_run`):
``accuracy`` at the threshold chosen on the validation pairs (never on the
test pairs), ROC AUC, EER, TAR at FAR 1e-3, and retrieval precision@1 and
MAP@R over the test people; the same figures for the backbone's pooled
features alone, without the head, as ``backbone_*``. With ``--epochs 0`` the
run scores the untrained network: the ImageNet backbone with a randomly
initialised Linear + ReLU head (what ``verify`` would use with that run
folder) as the main keys, and the ImageNet features alone as ``backbone_*``.
Why the defaults are what they are is in the README (*Face verification with
Siamese networks*).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cnnlab import engine
from cnnlab.config import RESUMABLE_FIELDS, FaceTrainConfig, to_dict
from cnnlab.data.augment import FaceAugment, face_train_transform
from cnnlab.engine import Fitted, Schedule, Session, fit, infer, load_best, ranks_in_sync, session, shard, step_decay, timing
from cnnlab.faces.protocol import StudyData, load_study_data, positions
from cnnlab.files import atomic_torch_save, atomic_write_text
from cnnlab.losses import FaceLoss, Triplets, face_loss_class
from cnnlab.metrics import (best_threshold, mean_average_precision_at_r, pair_distances, precision_at_1, roc_auc,
                            verification_report)
from cnnlab.models.profile import count_parameters
from cnnlab.models.siamese import (SiameseNet, backbone_layers, build_siamese, check_weights, set_train_mode,
                                   set_trainable)
from cnnlab.run import FILE_ONLY, RunDir
from cnnlab.run import resume_config as run_resume_config
from cnnlab.runtime import barrier, device_name, seed_everything

logger = logging.getLogger(__name__)

KIND = "faces"
# What a resumed run may change: how fast it runs, and where its data is found.
RUNTIME_FIELDS = (*RESUMABLE_FIELDS, "data_dir", "download", "skip_bad_images", "protocol_dir")

# What ``cnnlab faces evaluate`` adds to summary.json (keys beginning so) about the best checkpoint it
# tested: dropped when a finished run is extended, since further training may replace that checkpoint.
EVALUATION_KEYS = ("lfw_",)
# Said in the console and the report when best.pt is the network before training (the best epoch is 0).
UNTRAINED_BEST = "training did not improve on the untrained network; best is epoch 0"

TEST_EMBEDDINGS = "test_embeddings.pt"
TEST_PAIRS = "test_pairs.csv"

EpochCallback = Callable[[dict], None]


# --------------------------------------------------------------------------- pieces


def build_model(cfg: FaceTrainConfig, weights: str | None = None) -> SiameseNet:
    """The run's network; ``weights`` overrides ``cfg.weights`` (``"none"`` when a checkpoint follows)."""
    return build_siamese(cfg.backbone, weights if weights is not None else cfg.weights, cfg.embedding_dim,
                         cfg.normalize_embeddings, head=cfg.head, flip_tta=cfg.flip_tta)


def frozen_layers(model: SiameseNet, cfg: FaceTrainConfig, epoch: int) -> list[nn.Module]:
    """Backbone layers that do not train in ``epoch`` (0-based): all of them during ``--freeze-epochs``
    or with ``--backbone-lr-mult 0``, else all but the last ``--trainable-layers``."""
    layers = backbone_layers(model.backbone)
    if epoch < cfg.freeze_epochs or cfg.backbone_lr_mult == 0:
        return layers
    if cfg.trainable_layers is None:
        return []
    return layers[: max(0, len(layers) - cfg.trainable_layers)]


def build_loss(cfg: FaceTrainConfig, num_classes: int | None = None) -> FaceLoss:
    """The loss ``cfg.loss`` names, with its options from ``cfg`` (see :class:`cnnlab.losses.FaceLoss`);
    ``num_classes``, the number of training people, for a loss that learns a weight per person."""
    return face_loss_class(cfg.loss).from_config(cfg, num_classes)


def build_optimizer(model: SiameseNet, cfg: FaceTrainConfig, loss: FaceLoss | None = None) -> torch.optim.Optimizer:
    """The optimizer of the network's groups (see :meth:`SiameseNet.param_groups`) and, where ``loss`` learns
    weights, a group ``loss`` of them before the head's, at the head's rate and weight decay."""
    # Every parameter gets a group now, frozen or not: layers that join later
    # (after --freeze-epochs) then train at their group's rate.
    for p in model.parameters():
        p.requires_grad_(True)
    groups = model.param_groups(cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay)
    learnt = list(loss.parameters()) if loss is not None else []
    if learnt:  # before the head's, which stays last: metrics.csv reports the last group's rate
        at = next(i for i, g in enumerate(groups) if g["name"].startswith("head"))
        groups.insert(at, {"name": "loss", "params": learnt, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    return engine.build_optimizer(groups, cfg.optimizer, cfg.lr, momentum=0.9)


def _mean_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    """A gradient averaged over the processes, as DDP averages the network's (the loss is outside DDP)."""
    import torch.distributed as dist

    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()


def infer_embeddings(model: SiameseNet, images: torch.Tensor, *, device: torch.device, batch_size: int = 256,
                     precision: str = "fp32", channels_last: bool = False, features: bool = False,
                     desc: str | None = None):
    """Embeddings (N, D) float32 on the CPU of uint8 ``images`` (N, 3, S, S), in eval mode, no augmentation;
    with ``features`` also the backbone's pooled features (N, F) from the same pass (:func:`cnnlab.engine.infer`
    with the model's own input normalisation)."""
    return infer(model, images, model.normalize_input, device=device, batch_size=batch_size, precision=precision,
                 channels_last=channels_last, features=features, desc=desc)


class _Spec:
    """What the engine needs to train a Siamese network (see :class:`cnnlab.engine.TrainSpec`)."""

    lr_group = -1  # the head's group: metrics.csv reports its rate
    best_key = "val_roc_auc"

    def __init__(self, cfg: FaceTrainConfig, d: StudyData, s: Session, model: SiameseNet, loss_fn: FaceLoss):
        self.cfg, self.d, self.s, self.model = cfg, d, s, model
        self.generators = (torch.Generator().manual_seed(cfg.seed + 1),  # pairs and P x K batches
                           torch.Generator().manual_seed(cfg.seed + 2 + 1000 * s.dist.rank))  # augmentation
        self.loss_fn = loss_fn
        if s.dist.enabled:
            for p in loss_fn.parameters():
                p.register_hook(_mean_over_ranks)
        self.aug = FaceAugment() if cfg.augment else None
        self.train_labels = d.faces.labels[d.train]
        # The fixed validation sets as rows of the validation embeddings.
        self.val_pairs = (positions(d.val, d.val_pairs.i), positions(d.val, d.val_pairs.j), d.val_pairs.same)
        self.val_triplets = Triplets(*(positions(d.val, t) for t in d.val_triplets))

    def epoch_batches(self, epoch: int, generator: torch.Generator | None = None) -> list:
        batches = self.loss_fn.epoch_batches(self.train_labels, self.cfg.batch_size, generator or self.generators[0])
        return shard([(self.d.train[idx], target) for idx, target in batches], self.s.dist.rank,
                     self.s.dist.world_size)

    def begin_epoch(self, model: SiameseNet, epoch: int) -> None:
        frozen = frozen_layers(model, self.cfg, epoch)
        set_trainable(model, frozen)
        set_train_mode(model, frozen, self.cfg.freeze_bn)

    def inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        idx, target = batch
        x = face_train_transform(self.d.faces.images[idx].to(self.s.device, non_blocking=True),
                                 self.generators[1], self.aug)
        return self.model.normalize_input(x), target.to(self.s.device)

    def loss(self, emb: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.loss_fn(emb, target), {}

    def train_row(self, sums: dict[str, float], images: float) -> dict[str, float]:
        return {}

    def validate(self, model: SiameseNet, epoch: int) -> dict[str, float]:
        """Validation loss (the training loss on the fixed validation pairs or triplets) and ROC AUC."""
        d, s = self.d, self.s
        emb = infer_embeddings(model, d.faces.images[d.val], device=s.device, batch_size=self.cfg.eval_batch_size,
                    precision=s.precision.precision, channels_last=s.precision.channels_last,
                    desc=f"epoch {epoch + 1} val" if s.progress and s.is_main else None)
        loss = self.loss_fn.validation_loss(emb, self.val_pairs, self.val_triplets)
        dist = pair_distances(emb, *self.val_pairs[:2])
        # NaN distances (weights that diverged this epoch) have no ROC; the engine stops on the NaN it reports.
        auc = roc_auc(dist, d.val_pairs.same) if bool(torch.isfinite(dist).all()) else float("nan")
        return {"val_loss": float(loss), "val_roc_auc": auc}


# --------------------------------------------------------------------------- testing


def _retrieval(emb: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    try:
        p1 = precision_at_1(emb, labels)
        mapr, queries = mean_average_precision_at_r(emb, labels)
    except ValueError:  # no test person with two images: retrieval is undefined
        return {"precision_at_1": None, "map_at_r": None, "retrieval_queries": 0}
    return {"precision_at_1": p1, "map_at_r": mapr, "retrieval_queries": queries}


def _pairs_csv(d: StudyData, ti: torch.Tensor, tj: torch.Tensor, dist: torch.Tensor) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "same", "distance", "file_a", "file_b"])
    files = d.faces.files
    for a, b, s, dd, ga, gb in zip(ti.tolist(), tj.tolist(), d.test_pairs.same.tolist(), dist.tolist(),
                                   d.test_pairs.i.tolist(), d.test_pairs.j.tolist()):
        w.writerow([a, b, int(s), repr(float(dd)), files[ga], files[gb]])
    return buf.getvalue()


def test_run(model: SiameseNet, d: StudyData, cfg: FaceTrainConfig, run: RunDir, *, device: torch.device,
             precision: str, channels_last: bool, progress: bool = True) -> dict:
    """Score ``model`` on the test pairs and people; write ``test_pairs.csv`` and ``test_embeddings.pt``.

    The threshold is the best one on the validation pairs; the backbone's
    features alone get the same treatment (``backbone_*`` keys).
    """
    kw = dict(device=device, batch_size=cfg.eval_batch_size, precision=precision, channels_last=channels_last,
              features=True)
    val_emb, val_feat = infer_embeddings(model, d.faces.images[d.val], desc="validation" if progress else None, **kw)
    vi, vj = positions(d.val, d.val_pairs.i), positions(d.val, d.val_pairs.j)
    test_emb, test_feat = infer_embeddings(model, d.faces.images[d.test_images], desc="test" if progress else None, **kw)
    ti, tj = positions(d.test_images, d.test_pairs.i), positions(d.test_images, d.test_pairs.j)
    labels = d.faces.labels[d.test_images]

    out: dict = {}
    for prefix, v, t in (("", val_emb, test_emb), ("backbone_", val_feat, test_feat)):
        threshold, val_acc = best_threshold(pair_distances(v, vi, vj), d.val_pairs.same)
        dist = pair_distances(t, ti, tj)
        rep = verification_report(dist, d.test_pairs.same, threshold)
        out.update({f"{prefix}{k}": rep[k] for k in ("roc_auc", "eer", "eer_threshold", "accuracy", "threshold",
                                                      "tar_at_far_1e-3", "tar_at_far_1e-3_resolved")})
        out[f"{prefix}val_accuracy"] = val_acc
        out.update({f"{prefix}{k}": v for k, v in _retrieval(t, labels).items()})
        if not prefix:
            test_dist = dist
    out["num_test_pairs_same"] = int(d.test_pairs.same.sum())

    atomic_write_text(run.path / TEST_PAIRS, _pairs_csv(d, ti, tj, test_dist))
    atomic_torch_save({
        "embeddings": test_emb,  # (N, D) float32
        "labels": labels,  # (N,) person ids into names
        "names": list(d.faces.names),
        "files": [d.faces.files[k] for k in d.test_images.tolist()],
        "root": str(d.faces.root),
        "image_size": cfg.image_size,
        "crop": cfg.crop,
        "align": cfg.align,
        "threshold": out["threshold"],
    }, run.path / TEST_EMBEDDINGS)
    return out


# --------------------------------------------------------------------------- the run


def train(cfg: FaceTrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          on_epoch: EpochCallback | None = None) -> dict:
    """Train ``cfg`` into the run folder ``out`` and return its summary.

    With ``resume`` the run continues from ``checkpoints/last.pt`` and ends
    where the uninterrupted run would have ended; a finished run is left as it
    is, unless ``cfg.epochs`` is more than it trained: then it trains on to
    the new end (StepLR steps where it would have) and its test is scored again
    with the best checkpoint. ``on_epoch(row)`` is called after every epoch's validation (the search
    uses it to report to Optuna and to prune). Runs as one process or under
    ``torchrun`` (each rank its share of every epoch's batches; rank 0 writes).
    """
    return session(cfg, out, lambda s: _train(cfg, s, on_epoch), resume=resume, progress=progress,
                   runtime_fields=RUNTIME_FIELDS, evaluation_keys=EVALUATION_KEYS)


def _train(cfg: FaceTrainConfig, s: Session, on_epoch: EpochCallback | None) -> dict:
    if not s.resuming:  # a missing weights file or package is told before the faces are decoded
        check_weights(cfg.backbone, cfg.weights)
    d = s.main_first(lambda: load_study_data(cfg) if s.is_main else load_study_data(replace(cfg, download=False)))
    seed_everything(cfg.seed)
    model = build_model(cfg, weights="none" if s.resuming else None).to(s.device)
    if s.precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg, len(torch.unique(d.faces.labels[d.train]))).to(s.device)
    optimizer = build_optimizer(model, cfg, loss_fn)
    spec = _Spec(cfg, d, s, model, loss_fn)
    schedule = Schedule(len(spec.epoch_batches(0, torch.Generator().manual_seed(0))),
                        step_decay(cfg.step_size, cfg.gamma))
    fitted = fit(s, spec, model, optimizer, schedule, epochs=cfg.epochs, kind=KIND, config=to_dict(cfg),
                 banner=_banner(cfg, s, d, spec.loss_fn), compile=cfg.compile, validate_untrained=True,
                 on_epoch=on_epoch, modules={"loss": loss_fn} if loss_fn.state_dict() else None)
    load_best(s, model)
    in_sync = ranks_in_sync(model, s.dist)
    if not s.is_main:  # the test writes files: rank 0 alone
        barrier(s.dist)
        return {}
    t0 = time.perf_counter()
    scores = test_run(model, d, cfg, s.run, device=s.device, precision=s.precision.precision,
                      channels_last=s.precision.channels_last, progress=s.progress)
    summary = _finish(cfg, s, model, spec.loss_fn, d, fitted, {**scores, "test_seconds": time.perf_counter() - t0},
                      in_sync)
    barrier(s.dist)
    return summary


def _banner(cfg: FaceTrainConfig, s: Session, d: StudyData, loss: FaceLoss) -> str:
    n = d.sizes()
    return (f"training {cfg.backbone} + {cfg.embedding_dim}-d head ({loss.describe()}) "
            f"on {device_name(s.device)}, {s.precision.precision}"
            f"{' + channels_last' if s.precision.channels_last else ''}; {n['num_train_images']} train images of "
            f"{n['num_train_people']} people, {n['num_val_pairs']} validation pairs, {n['num_test_pairs']} test "
            f"pairs ({d.protocol}){f'; {s.dist.world_size} processes' if s.dist.enabled else ''}")


def _finish(cfg: FaceTrainConfig, s: Session, model: SiameseNet, loss: FaceLoss, d: StudyData, fitted: Fitted,
            scores: dict, in_sync: bool) -> dict:
    best = fitted.best
    best_row = next(r for r in fitted.history if r["epoch"] == best["epoch"])
    summary = {
        "kind": KIND, "status": "finished", "backbone": cfg.backbone, **loss.summary(), "epochs": cfg.epochs,
        "best_epoch": best["epoch"], "best_val_roc_auc": best["val_roc_auc"], "best_val_loss": best_row["val_loss"],
        **scores, **timing(fitted.history),
        "trainable_parameters": count_parameters(model), **d.sizes(), "protocol": d.protocol,
        "people_root": str(d.faces.root), "alignment": d.faces.alignment or {"align": cfg.align},
        **s.facts(), "ranks_in_sync": in_sync,
    }
    summary = s.run.update_summary(**summary)
    if cfg.epochs > 0 and best["epoch"] == 0:  # epoch 0, the untrained network, competes for best.pt
        logger.warning("%s; its test figures are the untrained network's", UNTRAINED_BEST)
    logger.info("best validation ROC AUC %.4f (epoch %d); test ROC AUC %.4f, EER %.4f, accuracy %.4f at "
                "threshold %.4f; %.1fs of training", best["val_roc_auc"], best["epoch"], scores["roc_auc"],
                scores["eer"], scores["accuracy"], scores["threshold"], summary["train_seconds"], extra=FILE_ONLY)
    return summary


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> FaceTrainConfig:
    """The saved config of a run, with only runtime fields overridden."""
    return run_resume_config(FaceTrainConfig, run_dir, overrides, RUNTIME_FIELDS)
