import pytest
import torch

from cnnlab.data.augment import (CIFAR10_MEAN, CIFAR10_STD, CIFAR_AUGMENTS, AugmentConfig, CropFlip, affine_matrices,
                                 augment, color_jitter, draw_params, eval_transform, hflip, random_affine,
                                 train_transform)
from cnnlab.data.augment import FaceAugment, draw_face_params, face_augment, face_train_transform

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


def _images(n=8, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_eval_transform_is_deterministic_and_only_normalises():
    x = _images()
    a, b = eval_transform(x), eval_transform(x)
    assert torch.equal(a, b)
    expected = (x.float() / 255 - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None]
    assert torch.allclose(a, expected, atol=1e-6)


def test_train_transform_varies_per_draw_and_per_sample():
    x = _images(1).repeat(6, 1, 1, 1)  # six copies of one image
    g = torch.Generator().manual_seed(0)
    first, second = train_transform(x, g), train_transform(x, g)
    assert not torch.allclose(first, second)
    # Parameters are drawn per sample: the six copies come out different.
    assert len({round(float(v), 4) for v in first.flatten(1).mean(1)}) == 6


def test_train_transform_is_reproducible_from_the_generator_state():
    x = _images()
    a = train_transform(x, torch.Generator().manual_seed(5))
    b = train_transform(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_null_augmentation_is_the_identity():
    x = _images().float() / 255
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, degrees=0, translate=0, scale=(1, 1), flip_p=0)
    assert torch.allclose(augment(x, draw_params(len(x), cfg, torch.Generator())), x, atol=1e-5)


def test_parameters_stay_in_their_ranges():
    cfg = AugmentConfig()
    p = draw_params(10_000, cfg, torch.Generator().manual_seed(0))
    for k in ("brightness", "contrast", "saturation"):
        assert p[k].min() >= 0.75 and p[k].max() <= 1.25
    assert p["angle"].abs().max() <= 10 and p["tx"].abs().max() <= 3.2 and p["ty"].abs().max() <= 3.2
    assert torch.equal(p["tx"], p["tx"].round())
    assert p["scale"].min() >= 0.9 and p["scale"].max() <= 1.1
    assert 0.45 < p["flip"].float().mean() < 0.55


def test_translation_moves_pixels_by_whole_pixels():
    img = torch.zeros(1, 3, 32, 32)
    img[..., 10, 12] = 1
    theta = affine_matrices(torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([-2.0]), torch.tensor([1.0]), 32, 32)
    out = random_affine(img, theta)
    assert (out[0, 0] > 0.5).nonzero().tolist() == [[8, 15]]


def test_rotation_by_90_degrees_matches_rot90():
    img = torch.rand(1, 3, 32, 32)
    theta = affine_matrices(torch.tensor([90.0]), torch.zeros(1), torch.zeros(1), torch.ones(1), 32, 32)
    out = random_affine(img, theta)
    assert min((out - torch.rot90(img, k, dims=(2, 3))).abs().max() for k in (1, -1)) < 1e-4


def test_flip_only_where_asked():
    x = torch.rand(2, 3, 4, 4)
    out = hflip(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(2)) and torch.equal(out[1], x[1])


def test_color_jitter_matches_torchvision_with_one_factor():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(2, 3, 8, 8)
    f = torch.tensor([1.2, 0.8])
    ours = color_jitter(x, f, torch.ones(2), torch.ones(2))
    ref = torch.stack([TF.adjust_brightness(x[i], float(f[i])) for i in range(2)])
    assert torch.allclose(ours, ref, atol=1e-6)
    ours = color_jitter(x, torch.ones(2), f, torch.ones(2))
    ref = torch.stack([TF.adjust_contrast(x[i], float(f[i])) for i in range(2)])
    assert torch.allclose(ours, ref, atol=1e-5)
    ours = color_jitter(x, torch.ones(2), torch.ones(2), f)
    ref = torch.stack([TF.adjust_saturation(x[i], float(f[i])) for i in range(2)])
    assert torch.allclose(ours, ref, atol=1e-5)


# --- faces


def _face_batch(n=6, size=24):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_no_augmentation_only_scales_to_unit_range():
    x = _face_batch()
    out = face_train_transform(x, torch.Generator().manual_seed(0), None)
    assert out.dtype == torch.float32 and torch.equal(out, x.float() / 255)


def test_identity_parameters_leave_images_unchanged():
    x = _face_batch().float() / 255
    params = {"flip": torch.zeros(6, dtype=torch.bool), "zoom": torch.ones(6, dtype=torch.float64),
              "tx": torch.zeros(6, dtype=torch.float64), "ty": torch.zeros(6, dtype=torch.float64)}
    assert torch.allclose(face_augment(x, params), x, atol=1e-5)


def test_flip_mirrors_exactly_the_chosen_images():
    x = _face_batch().float() / 255
    flip = torch.tensor([True, False, True, False, False, True])
    params = {"flip": flip, "zoom": torch.ones(6, dtype=torch.float64), "tx": torch.zeros(6, dtype=torch.float64),
              "ty": torch.zeros(6, dtype=torch.float64)}
    out = face_augment(x, params)
    assert torch.allclose(out[flip], x[flip].flip(3), atol=1e-5)
    assert torch.allclose(out[~flip], x[~flip], atol=1e-5)


def test_zoom_magnifies_the_centre():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 12:20, 12:20] = 1.0  # an 8-pixel square in the middle
    params = {"flip": torch.zeros(1, dtype=torch.bool), "zoom": torch.tensor([2.0], dtype=torch.float64),
              "tx": torch.zeros(1, dtype=torch.float64), "ty": torch.zeros(1, dtype=torch.float64)}
    out = face_augment(x, params)
    assert float(out[0, 0].gt(0.5).sum()) == 16 * 16  # twice the side


def test_draws_are_reproducible_and_within_range():
    cfg = FaceAugment()
    a = draw_face_params(500, cfg, torch.Generator().manual_seed(1))
    b = draw_face_params(500, cfg, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert 0.4 < float(a["flip"].float().mean()) < 0.6
    assert float(a["zoom"].min()) >= 1.0 and float(a["zoom"].max()) <= 1.15
    assert float(a["tx"].abs().max()) <= cfg.shift and float(a["ty"].abs().max()) <= cfg.shift
    out1 = face_train_transform(_face_batch(), torch.Generator().manual_seed(5), cfg)
    out2 = face_train_transform(_face_batch(), torch.Generator().manual_seed(5), cfg)
    assert torch.equal(out1, out2) and out1.shape == (6, 3, 24, 24)
    assert float(out1.min()) >= 0 and float(out1.max()) <= 1


# --- the standard CIFAR augmentation: crop of the reflect-padded image, flip -------------------


def _crop_by_loop(x, dx, dy, flip, padding):
    """What CropFlip does, one image at a time, as a reader checks it."""
    out = []
    for img, i, j, f in zip(x, dx.tolist(), dy.tolist(), flip.tolist()):
        padded = torch.nn.functional.pad(img[None], (padding,) * 4, mode="reflect")[0]
        crop = padded[:, j:j + img.shape[1], i:i + img.shape[2]]
        out.append(crop.flip(2) if f else crop)
    return torch.stack(out)


def test_crop_flip_is_the_per_image_crop_of_the_reflect_padded_image():
    x = _images(16).float() / 255
    aug = CropFlip()
    params = aug.draw(len(x), torch.Generator().manual_seed(3))
    assert torch.equal(aug.apply(x, params), _crop_by_loop(x, params["dx"], params["dy"], params["flip"], 4))


def test_crop_flip_centred_and_unflipped_is_the_identity_and_its_border_is_reflected():
    x = _images(2).float() / 255
    centre = {"dx": torch.tensor([4, 0]), "dy": torch.tensor([4, 0]), "flip": torch.tensor([False, False])}
    out = CropFlip().apply(x, centre)
    assert torch.equal(out[0], x[0])
    # Shifted by the whole padding: the first 4 rows and columns mirror the image (no black bar).
    assert torch.equal(out[1][:, 4:, 4:], x[1][:, :28, :28])
    assert torch.equal(out[1][:, 0, 4:], x[1][:, 4, :28]) and torch.equal(out[1][:, 4:, 0], x[1][:, :28, 4])


def test_crop_flip_draws_are_reproducible_and_cover_every_offset():
    a = CropFlip().draw(4000, torch.Generator().manual_seed(0))
    b = CropFlip().draw(4000, torch.Generator().manual_seed(0))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k in ("dx", "dy"):
        assert sorted(a[k].unique().tolist()) == list(range(9))  # 0 .. 2 * padding
    assert 0.45 < a["flip"].float().mean() < 0.55


def test_every_named_augmentation_transforms_a_batch():
    x = _images(4)
    assert set(CIFAR_AUGMENTS) == {"study", "crop-flip", "none"} and CIFAR_AUGMENTS["none"] is None
    for name, aug in CIFAR_AUGMENTS.items():
        out = train_transform(x, torch.Generator().manual_seed(0), aug)
        assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32, name
        again = train_transform(x, torch.Generator().manual_seed(0), aug)
        assert torch.equal(out, again), name
    assert torch.equal(train_transform(x, torch.Generator(), None), eval_transform(x))
