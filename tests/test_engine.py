"""The one training loop: same numbers as before it was shared, its schedule, sharding and checks."""

import ast
import math
import re
from pathlib import Path

import pytest
import torch

from cnnlab.cifar.train import build_optimizer as build_cifar_optimizer
from cnnlab.cifar.train import resume_config as cifar_resume_config
from cnnlab.cifar.train import train as cifar_train
from cnnlab.config import CifarTrainConfig, FaceTrainConfig
from cnnlab.data.augment import FaceAugment, eval_transform, face_train_transform, train_transform
from cnnlab.data.cifar10 import load_cifar10, stratified_split, subsample
from cnnlab.engine import Schedule, batch_indices, build_optimizer, exponential_decay, shard, step_decay
from cnnlab.faces.protocol import load_study_data, positions
from cnnlab.data.samplers import PKBatchSampler, sample_pairs
from cnnlab.faces.train import frozen_layers
from cnnlab.faces.train import build_model as build_face_model
from cnnlab.faces.train import build_optimizer as build_face_optimizer
from cnnlab.faces.train import infer_embeddings as face_embed
from cnnlab.faces.train import train as faces_train
from cnnlab.files import atomic_torch_save, load_checkpoint
from cnnlab.losses import AllTripletsMiner, BatchHardMiner, ContrastiveLoss, SemiHardMiner, TripletMarginLoss
from cnnlab.metrics import pair_distances, roc_auc
from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.siamese import set_train_mode, set_trainable
from cnnlab.run import RunDir
from tests.conftest import STUDY, train_until, write_cifar_batches
from tests.faces.conftest import make_people, tiny_config

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"

@pytest.fixture
def denormals_flushed():
    old = torch.get_num_threads()
    torch.set_flush_denormal(True)  # tiny weights stay out of the slow denormal range
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _assert_same_rows(rows, expected, counts=()):
    """``rows`` (metrics.csv) against a plain loop's: epochs and ``counts`` exact, floats to rel=1e-5.

    Same machine, same kernels, same batch shapes: only the order of the sums may differ (the engine
    adds the losses in float64 on the device, validation runs in batches of ``eval_batch_size``), a few
    float32 ulps on values of order 1, so rel=1e-5 holds on any CPU."""
    assert [r["epoch"] for r in rows] == [e["epoch"] for e in expected]
    for row, exp in zip(rows, expected):
        for k, v in exp.items():
            if k in counts:
                assert row[k] == v, (row["epoch"], k)
            elif math.isnan(v):
                assert math.isnan(row[k]), (row["epoch"], k)
            else:
                assert row[k] == pytest.approx(v, rel=1e-5, abs=1e-7), (row["epoch"], k)


def _plain_cifar_rows(cfg: CifarTrainConfig) -> list[dict[str, float]]:
    """What the engine must compute for ``cfg``, by a loop a reader checks line by line: the same
    split, initial weights, batches, augmentation draws, optimiser and per-step schedule, and nothing else."""
    data = load_cifar10(cfg.data_dir)
    train_idx, val_idx = stratified_split(data.train_labels, cfg.val_per_class, cfg.seed)
    train_idx = subsample(train_idx, cfg.max_train_samples, cfg.seed)
    x, y = data.train_images[train_idx], data.train_labels[train_idx]
    torch.manual_seed(cfg.seed)
    model = BaseCNN(cfg.blocks, cfg.width)
    opt = build_cifar_optimizer(model, cfg)
    shuffle, draws = torch.Generator().manual_seed(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed + 2)
    steps = len(x) // cfg.batch_size
    rows = []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=shuffle)
        losses, correct = [], 0
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            logits = model(train_transform(x[idx], draws))
            loss = torch.nn.functional.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
            t, warmup = epoch * steps + step, cfg.warmup_epochs * steps  # a linear warm-up, then decay per epoch
            for group in opt.param_groups:
                group["lr"] = cfg.lr * cfg.gamma ** epoch * (min(1.0, (t + 1) / warmup) if t < warmup else 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y[idx]).sum())
        model.eval()
        with torch.no_grad():
            val_logits = model(eval_transform(data.train_images[val_idx]))
        val_y = data.train_labels[val_idx]
        rows.append({"epoch": epoch + 1.0, "train_loss": sum(losses) / steps, "train_accuracy": correct / (steps * cfg.batch_size),
                     "val_loss": torch.nn.functional.cross_entropy(val_logits, val_y).item(),
                     "val_accuracy": int((val_logits.argmax(1) == val_y).sum()) / len(val_y), "lr": cfg.lr * cfg.gamma ** epoch})
    return rows


@pytest.mark.numerics
@pytest.mark.parametrize("blocks", ["A", "E"])
def test_cifar_metrics_are_those_of_a_plain_training_loop(blocks, tmp_path):
    """The engine (schedule per step, non-finite checks, checkpoints, batched validation) trains exactly what a
    plain loop trains."""
    data = write_cifar_batches(tmp_path / "c").parent
    cfg = CifarTrainConfig(**{**STUDY, "data_dir": str(data), "blocks": blocks, "width": 0.125, "batch_size": 32,
                              "eval_batch_size": 64, "epochs": 2, "lr": 0.02, "device": "cpu", "precision": "fp32",
                              "channels_last": False})
    cifar_train(cfg, tmp_path / "run", progress=False)
    _assert_same_rows(RunDir(tmp_path / "run").read_metrics(), _plain_cifar_rows(cfg),
                      counts=("train_accuracy", "val_accuracy"))


def _plain_face_batches(cfg: FaceTrainConfig, labels: torch.Tensor, g: torch.Generator) -> list:
    """One epoch's ``(images, target)``: fresh pairs as ``[first; second]`` images (a last partial batch
    dropped unless it is the only one), or P x K batches."""
    if cfg.loss == "contrastive":
        i, j, y = sample_pairs(labels, g)
        half = cfg.batch_size // 2
        starts = range(0, max(len(y) - half + 1, 1), half)
        return [(torch.cat([i[s:s + half], j[s:s + half]]), y[s:s + half]) for s in starts]
    sampler = PKBatchSampler(labels, cfg.batch_size // cfg.pk_images, cfg.pk_images, generator=g)
    return [(torch.tensor(b), labels[torch.tensor(b)]) for b in sampler]


def _plain_face_rows(cfg: FaceTrainConfig) -> list[dict[str, float]]:
    """What the engine must compute for a face ``cfg``: the study's data, initial weights, batches
    (pairs or P x K), augmentation draws, frozen layers, optimiser groups and StepLR per epoch, trained by
    a plain loop; the untrained network scored first (epoch 0)."""
    d = load_study_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_face_model(cfg)
    opt = build_face_optimizer(model, cfg)
    base = [g["lr"] for g in opt.param_groups]
    pairs, draws = torch.Generator().manual_seed(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed + 2)
    if cfg.loss == "contrastive":
        loss_fn = ContrastiveLoss(cfg.margin)
    else:
        loss_fn = TripletMarginLoss(cfg.margin)
        miner = {"batch-hard": BatchHardMiner(), "semi-hard": SemiHardMiner(cfg.margin),
                 "all": AllTripletsMiner()}[cfg.miner]

    def validate():
        emb = face_embed(model, d.faces.images[d.val], device=torch.device("cpu"), batch_size=cfg.eval_batch_size)
        vi, vj = positions(d.val, d.val_pairs.i), positions(d.val, d.val_pairs.j)
        if cfg.loss == "contrastive":
            loss = loss_fn(emb[vi], emb[vj], d.val_pairs.same)
        else:
            a, p, n = (positions(d.val, t) for t in d.val_triplets)
            loss = loss_fn(emb[a], emb[p], emb[n])
        return {"val_loss": float(loss), "val_roc_auc": roc_auc(pair_distances(emb, vi, vj), d.val_pairs.same)}

    rows = [{"epoch": 0.0, "train_loss": math.nan, **validate(), "lr": cfg.lr}]
    for epoch in range(cfg.epochs):
        frozen = frozen_layers(model, cfg, epoch)
        set_trainable(model, frozen)
        set_train_mode(model, frozen, cfg.freeze_bn)
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * cfg.gamma ** (epoch // cfg.step_size)
        losses = []
        for idx, target in _plain_face_batches(cfg, d.faces.labels[d.train], pairs):
            emb = model(model.normalize_input(face_train_transform(d.faces.images[d.train[idx]], draws, FaceAugment())))
            if cfg.loss == "contrastive":
                loss = loss_fn(emb[:len(emb) // 2], emb[len(emb) // 2:], target)
            else:
                loss = loss_fn.from_batch(emb, target, miner)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        rows.append({"epoch": epoch + 1.0, "train_loss": sum(losses) / len(losses), **validate(),
                     "lr": cfg.lr * cfg.gamma ** (epoch // cfg.step_size)})
    return rows


@pytest.mark.numerics
@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_faces_metrics_are_those_of_a_plain_training_loop(loss, tmp_path):
    faces = make_people(tmp_path / "f")
    cfg = tiny_config(faces, epochs=2, loss=loss, precision="fp32", channels_last=False)
    faces_train(cfg, tmp_path / "run", progress=False)
    _assert_same_rows(RunDir(tmp_path / "run").read_metrics(), _plain_face_rows(cfg))


def test_a_checkpoint_of_the_epoch_scheduler_resumes_to_the_same_run(tmp_path, denormals_flushed):
    """cnnlab 0.1 saved an ExponentialLR (stepped per epoch) in last.pt; such a run still resumes exactly."""
    data = write_cifar_batches(tmp_path / "c").parent
    cfg = CifarTrainConfig(**{**STUDY, "data_dir": str(data), "width": 0.125, "batch_size": 32, "eval_batch_size": 64,
                              "epochs": 3, "lr": 0.02, "device": "cpu", "precision": "fp32", "channels_last": False})
    cifar_train(cfg, tmp_path / "full", progress=False)
    train_until(cifar_train, cfg, tmp_path / "part", epoch=1)
    last = tmp_path / "part" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    sched = ckpt["scheduler"]
    ckpt["scheduler"] = {"gamma": 0.85, "base_lrs": sched["base_lrs"], "last_epoch": 1, "_step_count": 2,
                         "_get_lr_called_within_step": False, "_last_lr": [0.02 * 0.85] * 2}
    del ckpt["scaler"]
    ckpt["rng"] = ckpt["rng"][0]  # a single process saved one state, not a list
    atomic_torch_save(ckpt, last)

    cifar_train(cifar_resume_config(tmp_path / "part"), tmp_path / "part", resume=True, progress=False)
    full, part = RunDir(tmp_path / "full").read_metrics(), RunDir(tmp_path / "part").read_metrics()
    assert len(part) == 3
    for a, b in zip(full, part):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert a[k] == b[k], (a["epoch"], k)


def test_schedule_warms_up_then_decays_per_epoch():
    s = Schedule(steps_per_epoch=4, decay=exponential_decay(0.5), warmup_steps=6)
    assert [s.factor(t) for t in range(10)] == pytest.approx(
        [1 / 6, 2 / 6, 3 / 6, 4 / 6, 0.5 * 5 / 6, 0.5, 0.5, 0.5, 0.25, 0.25])
    steps = Schedule(steps_per_epoch=2, decay=step_decay(3, 0.1))
    assert [steps.factor(t) for t in range(0, 14, 2)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])


def test_the_scheduler_state_resumes_the_rate_of_every_step():
    def run(steps, state=None):
        w = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([w], lr=0.1)
        s = Schedule(3, exponential_decay(0.9), warmup_steps=4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: s.factor(t))
        if state is not None:
            opt.load_state_dict(state[0])
            sched.load_state_dict(state[1])
        rates = []
        for _ in range(steps):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return rates, (opt.state_dict(), sched.state_dict())

    whole, _ = run(10)
    first, state = run(4)
    rest, _ = run(6, state)
    assert first + rest == whole


def test_every_rank_gets_the_same_number_of_whole_batches():
    batches = list(range(7))
    shares = [shard(batches, r, 3) for r in range(3)]
    assert shares == [[0, 3], [1, 4], [2, 5]]
    assert shard(batches, 0, 1) == batches
    assert shard([0], 1, 2) == []  # fewer batches than ranks: nobody gets a partial epoch ahead of the others
    idx = batch_indices(torch.arange(10), 3, drop_last=True, rank=1, world_size=2)
    assert [b.tolist() for b in idx] == [[1, 3, 5]]


def test_build_optimizer():
    def groups():
        return [{"params": [torch.nn.Parameter(torch.ones(2))], "weight_decay": 0.1}]

    sgd = build_optimizer(groups(), "sgd", 0.1, momentum=0.9)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    assert sgd.param_groups[0]["weight_decay"] == 0.1
    assert not build_optimizer(groups(), "sgd", 0.1, momentum=0.0).param_groups[0]["nesterov"]
    assert isinstance(build_optimizer(groups(), "adamw", 0.1), torch.optim.AdamW)
    with pytest.raises(ValueError, match="sgd, adamw or adam"):
        build_optimizer(groups(), "lion", 0.1)


def _windows(path: Path, size: int = 6) -> dict[tuple[str, ...], int]:
    """Every run of ``size`` non-trivial lines, with names and numbers blanked (as a reader sees a copy)."""
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(("#", "import ", "from ", '"""')) or s in (")", "]", "}", "):", "else:"):
            continue
        lines.append((n, re.sub(r"\b\d+(\.\d+)?\b", "0", s)))
    return {tuple(s for _, s in lines[i:i + size]): lines[i][0] for i in range(len(lines) - size + 1)}


def test_the_two_studies_training_code_repeats_no_block_of_six_lines():
    a, b = _windows(SRC / "cifar" / "train.py"), _windows(SRC / "faces" / "train.py")
    shared = sorted(set(a) & set(b))
    assert not shared, "repeated between cifar/train.py and faces/train.py:\n" + "\n".join(
        f"cifar line {a[w]}, faces line {b[w]}: {w[0]} ..." for w in shared)


def test_no_function_is_longer_than_a_reader_can_hold():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 85:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, "functions over ~80 lines: " + ", ".join(long)


@pytest.mark.parametrize("study", ["cifar", "faces"])
def test_compile_trains_through_the_compiled_network(study, tmp_path, denormals_flushed, monkeypatch):
    """--compile: the steps run through torch.compile's module and give the eager numbers.

    Inductor's code generation takes minutes on a small CPU, so the test compiles with
    the aot_eager backend: the same graph capture and autograd, without generated kernels."""
    import functools

    compiled = []
    real = torch.compile

    def compile_(model, **kw):
        compiled.append(type(model).__name__)
        return real(model, **{**kw, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_)
    if study == "cifar":
        data = write_cifar_batches(tmp_path / "c").parent
        make = functools.partial(CifarTrainConfig, data_dir=str(data), width=0.125, batch_size=32,
                                 eval_batch_size=64, epochs=1, lr=0.02, device="cpu", precision="fp32")
        run = cifar_train
    else:
        faces = make_people(tmp_path / "f")
        make, run = functools.partial(tiny_config, faces, epochs=1), faces_train
    run(make(compile=True), tmp_path / "compiled", progress=False)
    assert compiled == (["BaseCNN"] if study == "cifar" else ["SiameseNet"])
    run(make(), tmp_path / "eager", progress=False)
    a, b = RunDir(tmp_path / "compiled").read_metrics(), RunDir(tmp_path / "eager").read_metrics()
    assert a[-1]["train_loss"] == pytest.approx(b[-1]["train_loss"], rel=1e-4)
    assert a[-1]["val_loss"] == pytest.approx(b[-1]["val_loss"], rel=1e-4)
