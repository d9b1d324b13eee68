"""Train a Siamese face-verification network into a run folder (``cnnlab faces train``).

``train(cfg, out)`` decodes the face set once (cached), splits it by
``--protocol`` (:mod:`cnnlab.faces.protocol`), and trains backbone + embedding
head with the contrastive loss on fresh pairs every epoch, or the triplet
loss on P x K batches with in-batch mining. Images stay uint8 in memory; each
batch is indexed, moved to the device, augmented (:func:`cnnlab.data.augment.face_train_transform`)
and normalised there.

The run folder is as for CIFAR: ``config.yaml``; ``metrics.csv`` with one row
per epoch (train loss, validation loss and ROC AUC, learning rate, seconds),
plus an epoch-0 row scoring the untrained network; ``checkpoints/last.pt``
(model, optimizer, scheduler, RNG states, history: ``--resume`` ends exactly
where the uninterrupted run would); ``checkpoints/best.pt`` by validation ROC
AUC (epoch 0 included, so training can never make the kept model worse on
validation); ``summary.json``; ``test_pairs.csv`` and ``test_embeddings.pt``,
from which every figure is drawn again without the model.

The test is scored once, with the best checkpoint: ``accuracy`` at the
threshold chosen on the validation pairs (never on the test pairs), ROC AUC,
EER, TAR at FAR 1e-3, and retrieval precision@1 and MAP@R over the test
people. The same figures for the backbone's pooled features alone, without
the head, are reported as ``backbone_*``. With ``--epochs 0`` the run scores
the untrained network: the ImageNet backbone with a randomly initialised
Linear + ReLU head (what ``verify`` would use with that run folder) as the
main keys, and the ImageNet backbone features alone as ``backbone_*``. A
random ReLU head is a random projection of the features with half of it cut
at zero, so it keeps most of their distance structure (and most of their
ROC AUC), but only the ``backbone_*`` figures are "the ImageNet backbone alone".

Why the defaults are what they are
----------------------------------
The original notebook (EfficientNet-B0, contrastive loss, margin 1, Adam at
1e-3 on every weight) ended with same-person and different-people distances
that overlapped almost completely. Measured here on LFW View 1 with
EfficientNet-Lite0 at 112 px (test = pairsDevTest; ``benchmarks/faces_view1.sh``),
three things cause that, and the defaults avoid each:

* **An unnormalised embedding of the wrong scale.** A random
  ``Linear(1280, 512)`` + ReLU on Lite0's ImageNet features puts pairs 5-6
  apart; against a margin of 1 every different-people pair starts beyond the
  margin and contributes nothing, so the only gradient pulls pairs together
  and the net first shrinks the whole embedding, overshooting at lr 1e-3
  (head on frozen features: test ROC AUC 0.75 before, 0.70-0.76 after five
  epochs). The triplet loss without normalisation collapsed outright (every
  embedding 0 after three epochs). Hence ``--normalize-embeddings`` is on:
  after the ReLU every coordinate is >= 0, so unit-length embeddings lie
  0 to sqrt(2) apart and margin 1 means "cosine at most 0.5" from the first
  step (the same head, normalised: 0.80 -> 0.87). On the unit sphere the study's margin of 1
  is also the better one: margin 2 exceeds every possible distance, so every
  different-people pair pushes forever (1 epoch: test ROC AUC 0.815 vs 0.860).
* **Adam at 1e-3 on the pretrained backbone.** It wrecks the ImageNet
  features within an epoch: the loss sticks at 0.5 (all embeddings equal)
  and validation ROC AUC falls from 0.74 to 0.61. The backbone trains at
  ``--lr x --backbone-lr-mult`` = 1e-4, the head at 1e-3; and because epoch 0
  (the untrained network) competes for ``best.pt``, a run that training made
  worse keeps its starting point.
* **BatchNorm statistics of small face batches.** Lite0's BatchNorm
  momentum is TensorFlow's 0.01, so in train mode its running statistics
  drift slowly from ImageNet's towards faces and evaluation normalises
  differently from training. ``--freeze-bn`` keeps the ImageNet statistics
  (the affine BatchNorm weights still train): after one epoch, test ROC AUC
  0.860 frozen against 0.833 in train mode.

All three together, the notebook's settings, take validation ROC AUC from
0.73 (untrained) to 0.63 in one epoch: the overlap the study ended with.

With these, the default contrastive recipe reaches test ROC AUC 0.91 on View 1
in 6 epochs (StepLR: 3 at 1e-3, 3 at 1e-4); the learning-rate step matters,
the first epoch at 1e-4 gains about 0.02 of validation AUC. Contrastive
training on the study's random pairs does squeeze the embedding into a few
dimensions (an effective rank of about 5 of 512): random different-people
pairs are easy to push past the margin. Verification of pairs (AUC) is
fine, but retrieval among thousands of faces is weak (precision@1 about
0.14, below the ImageNet features' 0.24). The triplet loss with batch-hard
mining (``--loss triplet``; margin 0.2 as in FaceNet, its default here)
keeps more of them (about 30), learns faster per image and generalises
better: test ROC AUC 0.95 and precision@1 0.47 after 8 epochs (a triplet
epoch shows each image once, a contrastive epoch twice), 0.91 after two. It
is the better choice for ``identify``. Batch-hard mining from the first step
first pulls every embedding close together (the training loss sits near the
margin) and spreads them out only slowly, so its distances are small (test
pairs a few hundredths apart, threshold 0.04): the threshold is chosen on the
validation pairs, so verification works, but compare distances only within
one run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

import cnnlab
from cnnlab.config import FaceTrainConfig, from_dict, to_dict
from cnnlab.data.samplers import PKBatchSampler, sample_pairs
from cnnlab.errors import CheckpointError, CnnlabError, TrainingDiverged
from cnnlab.data.augment import FaceAugment, face_train_transform
from cnnlab.faces.protocol import StudyData, load_study_data, positions
from cnnlab.faces.embed import embed, pair_distances
from cnnlab.models.profile import count_parameters
from cnnlab.files import atomic_torch_save, atomic_write_text, load_checkpoint, load_model_state
from cnnlab.losses import (
    AllTripletsMiner,
    BatchHardMiner,
    ContrastiveLoss,
    SemiHardMiner,
    TripletMarginLoss,
    TripletMiner,
)
from cnnlab.metrics import best_threshold, mean_average_precision_at_r, precision_at_1, roc_auc, verification_report
from cnnlab.models.siamese import (
    SiameseNet,
    backbone_layers,
    build_siamese,
    set_train_mode,
    set_trainable,
    upgrade_state_dict,
)
from cnnlab.run import RunDir, log_to_file
from cnnlab.run import resume_config as run_resume_config
from cnnlab.runtime import device_name, enable_fast_kernels, autocast, resolve_device, resolve_precision, rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)

KIND = "faces"
# Fields that change how fast a run goes or where its data is found, not what it computes:
# a resumed run may change them.
RUNTIME_FIELDS = ("device", "eval_batch_size", "data_dir", "download", "skip_bad_images", "protocol_dir")

TEST_EMBEDDINGS = "test_embeddings.pt"
TEST_PAIRS = "test_pairs.csv"

EpochCallback = Callable[[dict], None]


# --------------------------------------------------------------------------- pieces


def build_model(cfg: FaceTrainConfig, weights: str | None = None) -> SiameseNet:
    """The run's network; ``weights`` overrides ``cfg.weights`` (``"none"`` when a checkpoint follows)."""
    return build_siamese(cfg.backbone, weights if weights is not None else cfg.weights, cfg.embedding_dim,
                         cfg.normalize_embeddings)

def frozen_layers(model: SiameseNet, cfg: FaceTrainConfig, epoch: int) -> list[nn.Module]:
    """Backbone layers that do not train in ``epoch`` (0-based): all of them during ``--freeze-epochs``
    or with ``--backbone-lr-mult 0``, else all but the last ``--trainable-layers``."""
    layers = backbone_layers(model.backbone)
    if epoch < cfg.freeze_epochs or cfg.backbone_lr_mult == 0:
        return layers
    if cfg.trainable_layers is None:
        return []
    return layers[: max(0, len(layers) - cfg.trainable_layers)]

def _load_network(model: SiameseNet, state: object, path: Path) -> None:
    """Load a face checkpoint's ``state`` into ``model``, also one saved before Lite0 came from timm."""
    load_model_state(model, upgrade_state_dict(model, state), path, "this run's network")


def run_config(run: RunDir) -> FaceTrainConfig:
    """The saved configuration of a face run (a :class:`CnnlabError` when the folder is not one)."""
    return from_dict(FaceTrainConfig, run.read_config(), source=str(run.config_path))

def load_run_model(run: RunDir, checkpoint: str = "best",
                   device: str | torch.device = "cpu") -> tuple[SiameseNet, FaceTrainConfig]:
    """The network of a face run with the weights of ``checkpoints/<checkpoint>.pt``, in eval mode."""
    cfg = run_config(run)
    path = run.checkpoints / f"{checkpoint}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {run.path} a finished face run?")
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") not in (None, "faces"):
        raise CheckpointError(f"{path} is a {ckpt.get('kind')} checkpoint, not a face run's")
    model = build_model(cfg, weights="none")
    _load_network(model, ckpt.get("model"), path)
    return model.to(device).eval(), cfg



def build_loss(cfg: FaceTrainConfig) -> ContrastiveLoss | TripletMarginLoss:
    if cfg.loss == "contrastive":
        return ContrastiveLoss(cfg.margin)
    return TripletMarginLoss(cfg.margin)


def build_miner(cfg: FaceTrainConfig) -> TripletMiner:
    if cfg.miner == "semi-hard":
        return SemiHardMiner(max(cfg.margin, 1e-6))
    return AllTripletsMiner() if cfg.miner == "all" else BatchHardMiner()


def build_optimizer(model: SiameseNet, cfg: FaceTrainConfig) -> torch.optim.Optimizer:
    # Every parameter gets a group now, frozen or not: layers that join later
    # (after --freeze-epochs) then train at their group's rate.
    for p in model.parameters():
        p.requires_grad_(True)
    groups = model.param_groups(cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.Adam(groups, lr=cfg.lr)


def epoch_batches(cfg: FaceTrainConfig, train_labels: torch.Tensor,
                  generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(images, target)`` batches, indices into ``train_labels``.

    Contrastive: fresh study pairs (one per anchor image), ``--batch-size / 2``
    pairs a step, laid out as ``[first images; second images]`` with ``target``
    the pair labels. Triplet: P x K batches with ``target`` the person ids. A
    last partial batch is dropped unless it is the only one.
    """
    if cfg.loss == "contrastive":
        i, j, y = sample_pairs(train_labels, generator)
        half = cfg.batch_size // 2
        n = len(y) if len(y) < half else (len(y) // half) * half
        return [(torch.cat([i[s : s + half], j[s : s + half]]), y[s : s + half]) for s in range(0, n, half)]
    sampler = PKBatchSampler(train_labels, cfg.batch_size // cfg.pk_images, cfg.pk_images, generator=generator)
    out = []
    for b in sampler:
        idx = torch.tensor(b, dtype=torch.int64)
        out.append((idx, train_labels[idx]))
    return out


def _batch_loss(cfg: FaceTrainConfig, loss_fn, miner, emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if cfg.loss == "contrastive":
        half = len(emb) // 2
        return loss_fn(emb[:half], emb[half:], target)
    return loss_fn.from_batch(emb, target, miner)


def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    step = int(first_bad.item())
    if step >= 0:
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
            "the last good checkpoint is kept (try a lower --lr or --backbone-lr-mult)"
        )


def train_one_epoch(model: SiameseNet, images: torch.Tensor, batches, optimizer, cfg: FaceTrainConfig,
                    loss_fn, miner, aug: FaceAugment | None, aug_gen: torch.Generator, *,
                    device: torch.device, precision: str, channels_last: bool, epoch: int, progress: bool,
                    log_every: int = 25, note_every_s: float = 120.0) -> dict[str, float]:
    """One pass over ``batches`` of ``(image indices into images, target)``; returns loss sum and counts.

    NaN/inf is caught without a device sync per step: the first bad step is
    recorded on the device and looked at every ``log_every`` steps. Without a
    progress bar (output to a file) the progress is logged every
    ``note_every_s`` seconds instead.
    """
    from tqdm.auto import tqdm

    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)
    count, seen = 0, 0
    started = last_note = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch + 1} train", unit="batch", leave=False,
               disable=None if progress else True, dynamic_ncols=True)
    for step, (idx, target) in enumerate(bar):
        x = face_train_transform(images[idx].to(device, non_blocking=True), aug_gen, aug)
        x = model.normalize_input(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            emb = model(x)  # (B, D)
        loss = _batch_loss(cfg, loss_fn, miner, emb.float(), target.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        loss_d = loss.detach()
        first_bad = torch.where(~torch.isfinite(loss_d) & (first_bad < 0), step, first_bad)
        loss_sum += loss_d.double()
        count += 1
        seen += len(idx)
        if (step + 1) % log_every == 0 or step + 1 == len(batches):
            _check_finite(first_bad, epoch)
            if not bar.disable:
                bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}")
            elif time.perf_counter() - last_note > note_every_s:  # no bar (a log file): a line now and then
                last_note = time.perf_counter()
                logger.info("epoch %d: step %d/%d, loss %.4f, %.1f img/s", epoch + 1, step + 1, len(batches),
                            loss_sum.item() / count, seen / (last_note - started))
    _check_finite(first_bad, epoch)
    return {"loss_sum": loss_sum.item(), "steps": float(count), "images": float(seen)}


def validate(model: SiameseNet, d: StudyData, cfg: FaceTrainConfig, loss_fn, *, device: torch.device,
             precision: str, channels_last: bool, desc: str | None = None) -> dict[str, float]:
    """Validation loss (the training loss on the fixed validation pairs or triplets) and ROC AUC."""
    emb = embed(model, d.faces.images[d.val], device=device, batch_size=cfg.eval_batch_size, precision=precision,
                channels_last=channels_last, desc=desc)
    vi, vj = positions(d.val, d.val_pairs.i), positions(d.val, d.val_pairs.j)
    dist = pair_distances(emb, vi, vj)
    if cfg.loss == "contrastive":
        loss = loss_fn(emb[vi], emb[vj], d.val_pairs.same)
    else:
        a, p, n = (positions(d.val, t) for t in d.val_triplets)
        loss = loss_fn(emb[a], emb[p], emb[n])
    return {"val_loss": float(loss), "val_roc_auc": roc_auc(dist, d.val_pairs.same)}


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
    val_emb, val_feat = embed(model, d.faces.images[d.val], desc="validation" if progress else None, **kw)
    vi, vj = positions(d.val, d.val_pairs.i), positions(d.val, d.val_pairs.j)
    test_emb, test_feat = embed(model, d.faces.images[d.test_images], desc="test" if progress else None, **kw)
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
        "threshold": out["threshold"],
    }, run.path / TEST_EMBEDDINGS)
    return out


# --------------------------------------------------------------------------- the run


def train(cfg: FaceTrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          on_epoch: EpochCallback | None = None) -> dict:
    """Train ``cfg`` into the run folder ``out`` and return its summary.

    With ``resume`` the run continues from ``checkpoints/last.pt`` and ends
    where the uninterrupted run would have ended; a finished run is left as it
    is. ``on_epoch(row)`` is called after every epoch's validation (the search
    uses it to report to Optuna and to prune).
    """
    run = RunDir(out)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    enable_fast_kernels(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else precision == "bf16"
    run.prepare(to_dict(cfg), resume, ignore=RUNTIME_FIELDS)
    with log_to_file(run.log_path):
        if resume and run.read_summary().get("status") == "finished":
            logger.info("%s is already finished; nothing to do", run.path)
            return run.read_summary()
        return _train(cfg, run, resume, device, precision, channels_last, progress, on_epoch)


def _train(cfg: FaceTrainConfig, run: RunDir, resume: bool, device: torch.device, precision: str,
           channels_last: bool, progress: bool, on_epoch: EpochCallback | None) -> dict:
    d = load_study_data(cfg)
    sizes = d.sizes()
    train_labels = d.faces.labels[d.train]
    resuming = resume and run.last_checkpoint.is_file()

    seed_everything(cfg.seed)
    model = build_model(cfg, weights="none" if resuming else None).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    pair_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 2)
    loss_fn, miner = build_loss(cfg), build_miner(cfg)
    aug = FaceAugment() if cfg.augment else None
    images = d.faces.images  # uint8, on the CPU; each batch is moved to the device

    history: list[dict] = []
    best = {"val_roc_auc": -math.inf, "epoch": -1}
    start = 0
    if resuming:
        ckpt = load_checkpoint(run.last_checkpoint)
        _load_network(model, ckpt.get("model"), run.last_checkpoint)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], pair_gen, aug_gen)
        history, best, start = ckpt["history"], ckpt["best"], int(ckpt["epoch"])
        logger.info("resuming %s after epoch %d of %d", run.path, start, cfg.epochs)
    elif resume:
        logger.info("%s has no checkpoint yet; starting from the beginning", run.path)

    logger.info(
        "training %s + %d-d head (%s loss, margin %g%s) on %s, %s%s; %d train images of %d people, "
        "%d validation pairs, %d test pairs (%s)",
        cfg.backbone, cfg.embedding_dim, cfg.loss, cfg.margin,
        f", {cfg.miner} mining" if cfg.loss == "triplet" else "", device_name(device), precision,
        " + channels_last" if channels_last else "", sizes["num_train_images"], sizes["num_train_people"],
        sizes["num_val_pairs"], sizes["num_test_pairs"], d.protocol,
    )

    def checkpoint(epoch: int) -> None:
        atomic_torch_save({
            "kind": KIND, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng_state(pair_gen, aug_gen),
            "history": history, "best": best, "config": to_dict(cfg),
        }, run.last_checkpoint)
        # metrics.csv is rewritten from the checkpoint's history, so the two always agree.
        run.write_metrics(history)

    def record(row: dict) -> None:
        nonlocal best
        history.append(row)
        if row["val_roc_auc"] > best["val_roc_auc"]:
            best = {"val_roc_auc": row["val_roc_auc"], "epoch": row["epoch"]}
            atomic_torch_save({"kind": KIND, "model": model.state_dict(), "epoch": row["epoch"],
                               "val_roc_auc": row["val_roc_auc"], "config": to_dict(cfg)}, run.best_checkpoint)

    val_kw = dict(device=device, precision=precision, channels_last=channels_last)
    if not history:  # epoch 0: the untrained network, so the curves start where training did
        t0 = time.perf_counter()
        v = validate(model, d, cfg, loss_fn, desc="epoch 0 val" if progress else None, **val_kw)
        record({"epoch": 0, "train_loss": math.nan, **v, "lr": optimizer.param_groups[-1]["lr"],
                "train_seconds": 0.0, "images_per_second": math.nan, "seconds": time.perf_counter() - t0})
        logger.info("epoch 0 (untrained)  val loss %.4f  val ROC AUC %.4f", v["val_loss"], v["val_roc_auc"])
        checkpoint(0)
        if on_epoch is not None:
            on_epoch(history[-1])

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        frozen = frozen_layers(model, cfg, epoch)
        set_trainable(model, frozen)
        set_train_mode(model, frozen, cfg.freeze_bn)
        lr = optimizer.param_groups[-1]["lr"]  # the head's group
        batches = [(d.train[idx], target) for idx, target in epoch_batches(cfg, train_labels, pair_gen)]
        s = train_one_epoch(model, images, batches, optimizer, cfg, loss_fn, miner, aug, aug_gen, device=device,
                            precision=precision, channels_last=channels_last, epoch=epoch, progress=progress)
        train_seconds = time.perf_counter() - t0
        v = validate(model, d, cfg, loss_fn, desc=f"epoch {epoch + 1} val" if progress else None, **val_kw)
        scheduler.step()
        record({"epoch": epoch + 1, "train_loss": s["loss_sum"] / max(s["steps"], 1), **v, "lr": lr,
                "train_seconds": train_seconds, "images_per_second": s["images"] / max(train_seconds, 1e-9),
                "seconds": time.perf_counter() - t0})
        row = history[-1]
        logger.info("epoch %d/%d  train loss %.4f | val loss %.4f  ROC AUC %.4f | lr %.2e | %.0f img/s | %.1fs",
                    epoch + 1, cfg.epochs, row["train_loss"], row["val_loss"], row["val_roc_auc"], lr,
                    row["images_per_second"], row["seconds"])
        checkpoint(epoch + 1)
        if on_epoch is not None:
            on_epoch(row)

    # The test is looked at once, after training, with the best checkpoint.
    if not run.best_checkpoint.is_file():
        raise CnnlabError(f"{run.best_checkpoint} is missing; the run cannot be tested")
    _load_network(model, load_checkpoint(run.best_checkpoint)["model"], run.best_checkpoint)
    t0 = time.perf_counter()
    scores = test_run(model, d, cfg, run, progress=progress, **val_kw)
    test_seconds = time.perf_counter() - t0
    trained = [r for r in history if r["epoch"] > 0]
    total_train = sum(r["train_seconds"] for r in trained)
    best_row = next(r for r in history if r["epoch"] == best["epoch"])
    summary = {
        "kind": KIND,
        "status": "finished",
        "backbone": cfg.backbone,
        "loss": cfg.loss,
        "margin": cfg.margin,
        "miner": cfg.miner if cfg.loss == "triplet" else None,
        "epochs": cfg.epochs,
        "best_epoch": best["epoch"],
        "best_val_roc_auc": best["val_roc_auc"],
        "best_val_loss": best_row["val_loss"],
        **scores,
        "train_seconds": total_train,
        "wall_seconds": sum(r["seconds"] for r in history),
        "test_seconds": test_seconds,
        "train_images_per_second": (sum(r["images_per_second"] * r["train_seconds"] for r in trained) / total_train
                                    if total_train > 0 else None),
        "trainable_parameters": count_parameters(model),
        **sizes,
        "protocol": d.protocol,
        "people_root": str(d.faces.root),
        "device": device_name(device),
        "precision": precision,
        "channels_last": channels_last,
        "torch": torch.__version__,
        "cnnlab": cnnlab.__version__,
    }
    summary = run.update_summary(**summary)
    logger.info("best validation ROC AUC %.4f (epoch %d); test ROC AUC %.4f, EER %.4f, accuracy %.4f at "
                "threshold %.4f; %.1fs of training", best["val_roc_auc"], best["epoch"], scores["roc_auc"],
                scores["eer"], scores["accuracy"], scores["threshold"], total_train)
    return summary


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> FaceTrainConfig:
    """The saved config of a run, with only runtime fields overridden."""
    return run_resume_config(FaceTrainConfig, run_dir, overrides, RUNTIME_FIELDS)
