"""On-device augmentation: on a GPU it is the CPU result, for the same generator state.

The random parameters are drawn on the CPU from the generator whatever the images' device, so
both devices jitter, warp and flip each image by the same amounts; only float rounding differs.

Tolerances, on the normalised output (values in about [-2, 2.2]):

- fp32 matmuls (``highest``): 1e-4. Both devices compute in float32; the grid positions and the
  contrast means differ by a few ulps (~1e-6), which bilinear sampling passes on unchanged.
- TF32 matmuls (``high``, what :func:`cnnlab.runtime.enable_fast_kernels` sets for training):
  0.25. ``F.affine_grid`` is a batched matmul, and TF32 keeps 10 mantissa bits (rounded or
  truncated), so a grid coordinate in [-1, 1], a sum of three products, may move by about
  3 x 2^-10 ~ 3e-3, that is 0.048 px of a 32 px image; on noise images, where neighbouring
  pixels differ by up to 1, a value moves by up to 0.048, or 0.048 / 0.2435 ~ 0.2 once divided
  by the smallest CIFAR-10 standard deviation.

Face crops are not normalised and are 48 px here (half-side 24 px): 5e-5 and 3e-3 x 24 ~ 0.072,
so 0.08.
"""

import pytest
import torch

from cnnlab.data.augment import AugmentConfig, FaceAugment, eval_transform, face_train_transform, train_transform

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]

TOLERANCE = {"highest": 1e-4, "high": 0.25}
FACE_TOLERANCE = {"highest": 5e-5, "high": 0.08}


@pytest.fixture
def matmul_precision():
    """Sets torch's fp32 matmul precision for one test, then puts back what it was."""
    old = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(old)


def _noise(n: int, side: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)  # (B, 3, H, W)


@pytest.mark.parametrize("precision", ["highest", "high"])
def test_cifar_augmentation_on_cuda_matches_the_cpu(precision, matmul_precision):
    images = _noise(32, 32)
    matmul_precision("highest")
    g_cpu, g_gpu = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    on_cpu = train_transform(images, g_cpu, AugmentConfig())
    matmul_precision(precision)
    on_gpu = train_transform(images.cuda(), g_gpu, AugmentConfig())

    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    assert torch.equal(g_cpu.get_state(), g_gpu.get_state())  # the same draws, taken from the CPU generator
    assert not torch.allclose(on_cpu, eval_transform(images), atol=0.1)  # it did augment
    diff = (on_gpu.cpu() - on_cpu).abs().max().item()
    assert diff <= TOLERANCE[precision], f"largest difference {diff:.3g} with {precision} matmuls"


@pytest.mark.parametrize("precision", ["highest", "high"])
def test_face_augmentation_on_cuda_matches_the_cpu(precision, matmul_precision):
    images = _noise(16, 48)
    cfg = FaceAugment()
    matmul_precision("highest")
    g_cpu, g_gpu = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    on_cpu = face_train_transform(images, g_cpu, cfg)
    matmul_precision(precision)
    on_gpu = face_train_transform(images.cuda(), g_gpu, cfg)

    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    assert torch.equal(g_cpu.get_state(), g_gpu.get_state())
    assert not torch.allclose(on_cpu, images.float() / 255, atol=0.05)  # it did augment
    diff = (on_gpu.cpu() - on_cpu).abs().max().item()
    assert diff <= FACE_TOLERANCE[precision], f"largest difference {diff:.3g} with {precision} matmuls"
