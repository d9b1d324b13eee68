"""Whole CIFAR-10 runs on a GPU: ``--compile``, and a run stopped after an epoch that resumes.

A resumed GPU run reproduces the uninterrupted one to a tolerance, not bit for bit: CUDA
kernels are not all deterministic, and cnnlab does not ask them to be
(``torch.use_deterministic_algorithms`` would slow training). The ones these runs use:

- cuDNN convolutions: with ``cudnn.benchmark`` (set by ``enable_fast_kernels``) cuDNN times
  several algorithms and keeps the fastest, which may differ from one process or run to the
  next and sum in another order; the backward-filter and backward-data algorithms may
  also accumulate with atomic adds, in whatever order the threads arrive.
- Backward passes that scatter with atomics: ``index_add_`` / ``scatter_add_``, the gradient
  of indexing (``index_select``, embedding-style gathers), of ``F.grid_sample`` (the
  augmentation has none, as it takes no gradient), and of adaptive average pooling.
- TF32 matmuls and cuBLAS split-K reductions, whose order depends on the chosen kernel.

Each differs from a rerun by float rounding (~1e-7 relative per step in fp32, more in bf16),
so over the two tiny epochs here losses agree to 1e-3 and an accuracy to one image.

The networks are an eighth of the study's width on 200 images: compiling costs the same at
any width, and a larger network would only add seconds to the suite.
"""

import math

import pytest
import torch

from cnnlab.cifar.train import resume_config, train
from cnnlab.config import CifarTrainConfig
from cnnlab.run import RunDir
from tests.conftest import train_until, write_cifar_batches

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]

LOSS_TOLERANCE = 1e-3


def _config(data, **kw) -> CifarTrainConfig:
    base = dict(data_dir=str(data), blocks="A", width=0.125, batch_size=32, eval_batch_size=64, epochs=1, lr=0.02,
                device="cuda")
    return CifarTrainConfig(**{**base, **kw})


@pytest.fixture
def cifar_data(tmp_path):
    return write_cifar_batches(tmp_path / "c").parent


def test_a_compiled_run_finishes_and_learns_what_the_eager_run_learns(cifar_data, tmp_path):
    eager = train(_config(cifar_data), tmp_path / "eager", progress=False)
    compiled = train(_config(cifar_data, compile=True), tmp_path / "compiled", progress=False)

    assert compiled["status"] == "finished" and compiled["device"].startswith("cuda")
    a, b = RunDir(tmp_path / "eager").read_metrics(), RunDir(tmp_path / "compiled").read_metrics()
    assert [r["epoch"] for r in b] == [1]
    assert math.isfinite(b[0]["train_loss"]) and math.isfinite(b[0]["val_loss"])
    # Inductor fuses and reorders the float work, so the numbers agree only roughly.
    assert abs(a[0]["train_loss"] - b[0]["train_loss"]) <= 0.05, (a[0], b[0])
    assert 0 <= compiled["test_accuracy"] <= 1 and eager["precision"] == compiled["precision"]


def test_a_gpu_run_stopped_after_an_epoch_resumes_to_the_uninterrupted_result(cifar_data, tmp_path):
    cfg = _config(cifar_data, epochs=2)  # precision auto: what the study runs on this GPU
    full = train(cfg, tmp_path / "full", progress=False)
    train_until(train, cfg, tmp_path / "part", epoch=1)
    assert [r["epoch"] for r in RunDir(tmp_path / "part").read_metrics()] == [1]

    part = train(resume_config(tmp_path / "part"), tmp_path / "part", resume=True, progress=False)
    assert part["status"] == "finished" and part["precision"] == full["precision"]
    a, b = RunDir(tmp_path / "full").read_metrics(), RunDir(tmp_path / "part").read_metrics()
    assert [r["epoch"] for r in b] == [1, 2]
    one_image = {"train_accuracy": 1 / full["num_train"], "val_accuracy": 1 / full["num_val"]}
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss"):
            assert abs(ra[k] - rb[k]) <= LOSS_TOLERANCE, (ra["epoch"], k, ra[k], rb[k])
        for k, one in one_image.items():
            assert abs(ra[k] - rb[k]) <= one + 1e-9, (ra["epoch"], k, ra[k], rb[k])
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-9)
