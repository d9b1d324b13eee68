import pytest
import torch

from cnnlab.errors import ConfigError
from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.blocks import block_names
from cnnlab.models.profile import count_macs, count_parameters

# The original study's table (DESIGN.md): a model that differs is not the same model.
STUDY_PARAMS = {"A": 7_771_658, "B": 7_774_226, "C": 7_901_354, "D": 7_935_498, "D-sep": 1_139_338, "E": 752_266}


@pytest.mark.parametrize("blocks", list(STUDY_PARAMS))
def test_parameter_counts_equal_the_study(blocks):
    assert count_parameters(BaseCNN(blocks)) == STUDY_PARAMS[blocks]


@pytest.mark.parametrize("blocks", block_names() + ["AABBCCDE"])
def test_forward_shapes_at_quarter_width(blocks):
    model = BaseCNN(blocks, width=0.25).eval()
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    feats, maps = model.forward_features(x, return_maps=True)
    assert feats.shape == (3, 128)
    # stem at 32x32, then pools after blocks 3, 5 and 8.
    assert [m.shape[-1] for m in maps] == [32, 32, 32, 16, 16, 8, 8, 8, 4]
    assert [m.shape[1] for m in maps] == [32, 32, 32, 64, 64, 64, 128, 128, 128]
    assert torch.allclose(model.forward_head(feats), model(x))


def test_macs_follow_the_three_pools():
    # Block A is all 3x3 convs: MACs = sum of 9 * cin * cout * H * W, plus the classifier.
    # The spatial sizes are those of pools after blocks 3, 5 and 8 (the notebook pooled once, at
    # the end, and paid several times this).
    stem = [(3, 32, 32), (32, 64, 32), (64, 128, 32)]
    blocks = [(128, 128, 32), (128, 128, 32), (128, 256, 32), (256, 256, 16), (256, 256, 16),
              (256, 512, 8), (512, 512, 8), (512, 512, 8)]
    expected = sum(9 * cin * cout * s * s for cin, cout, s in stem + blocks) + 512 * 10
    assert count_macs(BaseCNN("A")) == expected


def test_bad_width_is_refused():
    with pytest.raises(ConfigError, match="width must be positive"):
        BaseCNN("A", width=0)


# --- the study notebook's network: one MaxPool, after block 8 ------------------------------


@pytest.mark.parametrize("blocks", list(STUDY_PARAMS))
def test_the_original_pooling_has_the_same_parameters(blocks):
    """Pooling has no parameters: the notebook's network is the study's table's, only more expensive."""
    assert count_parameters(BaseCNN(blocks, pooling="original")) == STUDY_PARAMS[blocks]


def _block_input_sides(model):
    sides = []
    hooks = [stage[0].register_forward_pre_hook(lambda m, args: sides.append(args[0].shape[-1]))
             for stage in model.blocks]
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    return sides


@pytest.mark.parametrize("blocks", block_names() + ["AABBCCDE"])
def test_original_blocks_all_see_32x32_and_intended_ones_32_16_8(blocks):
    assert _block_input_sides(BaseCNN(blocks, width=0.125, pooling="original")) == [32] * 8
    assert _block_input_sides(BaseCNN(blocks, width=0.125)) == [32, 32, 32, 16, 16, 8, 8, 8]
    feats, maps = BaseCNN(blocks, width=0.125, pooling="original").forward_features(torch.randn(2, 3, 32, 32),
                                                                                    return_maps=True)
    assert [m.shape[-1] for m in maps] == [32] * 8 + [16] and feats.shape == (2, 64)


def test_the_original_pooling_costs_about_six_times_the_compute():
    ratio = count_macs(BaseCNN("A", pooling="original")) / count_macs(BaseCNN("A"))
    assert 5 < ratio < 7


def test_an_unknown_pooling_is_refused():
    with pytest.raises(ConfigError, match="pooling must be intended or original, got 'late'"):
        BaseCNN("A", width=0.125, pooling="late")
