import torch

from cnnlab.faces.augment import FaceAugment, apply, draw_params, train_images


def _batch(n=6, size=24):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_no_augmentation_only_scales_to_unit_range():
    x = _batch()
    out = train_images(x, torch.Generator().manual_seed(0), None)
    assert out.dtype == torch.float32 and torch.equal(out, x.float() / 255)


def test_identity_parameters_leave_images_unchanged():
    x = _batch().float() / 255
    params = {"flip": torch.zeros(6, dtype=torch.bool), "zoom": torch.ones(6, dtype=torch.float64),
              "tx": torch.zeros(6, dtype=torch.float64), "ty": torch.zeros(6, dtype=torch.float64)}
    assert torch.allclose(apply(x, params), x, atol=1e-5)


def test_flip_mirrors_exactly_the_chosen_images():
    x = _batch().float() / 255
    flip = torch.tensor([True, False, True, False, False, True])
    params = {"flip": flip, "zoom": torch.ones(6, dtype=torch.float64), "tx": torch.zeros(6, dtype=torch.float64),
              "ty": torch.zeros(6, dtype=torch.float64)}
    out = apply(x, params)
    assert torch.allclose(out[flip], x[flip].flip(3), atol=1e-5)
    assert torch.allclose(out[~flip], x[~flip], atol=1e-5)


def test_zoom_magnifies_the_centre():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 12:20, 12:20] = 1.0  # an 8-pixel square in the middle
    params = {"flip": torch.zeros(1, dtype=torch.bool), "zoom": torch.tensor([2.0], dtype=torch.float64),
              "tx": torch.zeros(1, dtype=torch.float64), "ty": torch.zeros(1, dtype=torch.float64)}
    out = apply(x, params)
    assert float(out[0, 0].gt(0.5).sum()) == 16 * 16  # twice the side


def test_draws_are_reproducible_and_within_range():
    cfg = FaceAugment()
    a = draw_params(500, cfg, torch.Generator().manual_seed(1))
    b = draw_params(500, cfg, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert 0.4 < float(a["flip"].float().mean()) < 0.6
    assert float(a["zoom"].min()) >= 1.0 and float(a["zoom"].max()) <= 1.15
    assert float(a["tx"].abs().max()) <= cfg.shift and float(a["ty"].abs().max()) <= cfg.shift
    out1 = train_images(_batch(), torch.Generator().manual_seed(5), cfg)
    out2 = train_images(_batch(), torch.Generator().manual_seed(5), cfg)
    assert torch.equal(out1, out2) and out1.shape == (6, 3, 24, 24)
    assert float(out1.min()) >= 0 and float(out1.max()) <= 1
