import pytest
import torch

from cnnlab.errors import ConfigError
from cnnlab.models.attention import SpatialAttention, SqueezeExcite
from cnnlab.models.blocks import block_names, create_block, format_blocks, parse_blocks


def test_registry_holds_the_six_designs():
    assert block_names() == ["A", "B", "C", "D", "D-sep", "E"]


@pytest.mark.parametrize("name", ["A", "B", "C", "D", "D-sep", "E"])
@pytest.mark.parametrize("cin, cout", [(32, 32), (32, 64)])
def test_every_block_keeps_the_spatial_size(name, cin, cout):
    block = create_block(name, cin, cout)
    assert block(torch.randn(2, cin, 8, 8)).shape == (2, cout, 8, 8)


def test_attention_is_given_to_the_plain_block_not_copied():
    assert isinstance(create_block("B", 16, 16).attn, SpatialAttention)
    assert isinstance(create_block("C", 16, 16).attn, SqueezeExcite)
    a, b = create_block("A", 16, 16), create_block("B", 16, 16)
    assert type(a.conv) is type(b.conv)


def test_spatial_attention_gates_each_position():
    att = SpatialAttention(4)
    x = torch.randn(1, 4, 5, 5)
    gate = torch.sigmoid(att.gate(x))
    assert torch.allclose(att(x), x * gate)


def test_residual_uses_identity_or_projection():
    assert isinstance(create_block("D", 16, 16).shortcut, torch.nn.Identity)
    assert isinstance(create_block("D", 16, 32).shortcut, torch.nn.Conv2d)


@pytest.mark.parametrize("spec, expected", [
    ("B", ("B",) * 8),
    ("d-sep", ("D-sep",) * 8),
    ("AABBCCDE", ("A", "A", "B", "B", "C", "C", "D", "E")),
    ("A+A+D-sep+D-sep+C C E E", ("A", "A", "D-sep", "D-sep", "C", "C", "E", "E")),
])
def test_parse_blocks(spec, expected):
    assert parse_blocks(spec) == expected
    assert parse_blocks(format_blocks(expected)) == expected


@pytest.mark.parametrize("spec, message", [
    ("AAB", "names 3 blocks"),
    ("AAAAAAAAA", "names 9 blocks"),
    ("AAXAAAAA", "'XAAAAA' is not a block name"),
    ("", "expected one block name or eight"),
    ("A,E", "a comma separates variants \\(2 here\\).*compare --blocks A,E"),
    ("A,A,B,B,C,C,D,E", "a comma separates variants \\(8 here\\)"),
])
def test_bad_block_strings_name_the_option(spec, message):
    with pytest.raises(ConfigError, match=f"^blocks.*{message}"):
        parse_blocks(spec)


@pytest.mark.parametrize("name", ["D", "D-sep", "E"])
def test_residual_blocks_start_as_their_shortcut(name):
    block = create_block(name, 16, 16).eval()
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(block(x), torch.relu(x))
