"""Config values are checked against the fields' declared types, from YAML and from the command line alike."""

from __future__ import annotations

import pytest

from cnnlab.commands.main import main
from cnnlab.config import CifarTrainConfig, FaceSearchConfig, FaceTrainConfig, from_dict, to_dict
from cnnlab.errors import ConfigError


@pytest.mark.parametrize("key, value, expected", [
    ("width", [0.125], "a finite number"),
    ("data_dir", 123, "a string"),
    ("seed", "abc", "an integer"),
    ("max_train_samples", 150.5, "an integer or null"),
    ("max_train_samples", 150.0, "an integer or null"),  # a float, even a whole one, is not an integer
    ("label_smoothing", None, "a finite number"),  # null only where the field is optional
    ("batch_size", True, "an integer"),
    ("compile", "false", "true or false"),  # a quoted boolean is a string
    ("augment", "no", "study, crop-flip or none"),
    ("augment", 0, "study, crop-flip or none"),  # true and false are taken: a config of cnnlab 0.1
    ("channels_last", "yes", "auto or true or false or null"),
    ("width", float("inf"), "a finite number"),
    ("lr", float("nan"), "a finite number"),
    ("lr", "-inf", "a finite number"),
    ("blocks", {"A": 1}, "a string"),
])
def test_a_value_of_the_wrong_type_names_the_key_the_value_and_the_type(key, value, expected):
    with pytest.raises(ConfigError) as e:
        from_dict(CifarTrainConfig, {key: value}, source="run.yaml")
    assert str(e.value) == f"run.yaml: {key}: expected {expected}, got {value!r}"


def test_values_of_the_right_type_are_taken():
    cfg = from_dict(CifarTrainConfig, {"width": 1, "lr": "1e-3", "max_train_samples": None, "val_per_class": 5,
                                       "compile": False, "channels_last": None, "data_dir": "d"})
    assert cfg.width == 1.0 and isinstance(cfg.width, float)
    assert cfg.lr == 1e-3 and cfg.max_train_samples is None and cfg.val_per_class == 5


@pytest.mark.parametrize("cls, data, culprit", [
    (FaceTrainConfig, {"margin": "wide"}, "margin: expected a finite number or null, got 'wide'"),
    (FaceTrainConfig, {"trainable_layers": 2.5}, "trainable_layers: expected an integer or null, got 2.5"),
    (FaceTrainConfig, {"freeze_bn": "true"}, "freeze_bn: expected true or false, got 'true'"),
    (FaceSearchConfig, {"trials": 3.0}, "trials: expected an integer, got 3.0"),
    (FaceSearchConfig, {"prune": 1}, "prune: expected true or false, got 1"),
])
def test_every_config_class_is_checked_the_same_way(cls, data, culprit):
    with pytest.raises(ConfigError, match=culprit):
        from_dict(cls, data, source="f.yaml")


def test_command_line_values_are_named_as_options():
    from cnnlab.commands.main import flag

    with pytest.raises(ConfigError, match=r"^width: expected a finite number, got inf$") as e:
        from_dict(CifarTrainConfig, {"width": float("inf")}, source="options")
    assert e.value.worded(flag) == "--width: expected a finite number, got inf"  # as the command line says it


@pytest.mark.parametrize("opts, culprit", [
    (["--width", "inf"], "--width: expected a finite number, got inf"),
    (["--lr", "nan"], "--lr: expected a finite number, got nan"),
    (["--momentum=-inf"], "--momentum: expected a finite number, got -inf"),
])
def test_non_finite_numbers_on_the_command_line_are_refused(opts, culprit, tmp_path, capsys):
    rc = main(["cifar", "train", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "run"), *opts])
    err = capsys.readouterr().err
    assert rc == 2 and culprit in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_bad_option_beside_a_good_config_file_is_named_as_the_option(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("width: 0.5\n")
    rc = main(["cifar", "train", "--config", str(cfg), "--width", "inf", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "--width: expected a finite number, got inf" in err and str(cfg) not in err


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.mkdir(), "is a folder, not a regular file"),
    (lambda p: None, "does not exist"),
])
def test_a_config_path_that_is_not_a_file_says_what_it_is(make, problem, tmp_path):
    from cnnlab.config import load_yaml

    make(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=f"c.yaml {problem}"):
        load_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize("value, taken", [("auto", None), (None, None), (True, True), (False, False)])
def test_channels_last_takes_auto_true_false_and_null(value, taken, tmp_path):
    from cnnlab.config import load_yaml

    f = tmp_path / "c.yaml"
    f.write_text(f"channels_last: {'null' if value is None else str(value).lower()}\n")
    for cls in (CifarTrainConfig, FaceTrainConfig):
        assert from_dict(cls, load_yaml(f), source=str(f)).channels_last is taken
    assert CifarTrainConfig(channels_last=value).channels_last is taken  # from Python too
    with pytest.raises(ConfigError, match=r"^channels_last: expected auto, true or false, got 'yes'"):
        CifarTrainConfig(channels_last="yes")


@pytest.mark.parametrize("cls", [CifarTrainConfig, FaceTrainConfig])
def test_both_studies_share_one_runtime_config_listed_last(cls):
    """config.yaml and --help list the study's own fields first and the runtime ones last, as they always
    have; a resumed run may change the shared runtime fields plus the study's data location."""
    import dataclasses

    from cnnlab.cifar.train import RUNTIME_FIELDS as CIFAR_RESUMABLE
    from cnnlab.config import RESUMABLE_FIELDS, RuntimeConfig
    from cnnlab.faces.train import RUNTIME_FIELDS as FACE_RESUMABLE

    runtime = [f.name for f in dataclasses.fields(RuntimeConfig)]
    assert runtime == ["seed", "device", "precision", "channels_last", "compile", "eval_batch_size"]
    assert issubclass(cls, RuntimeConfig)
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[-len(runtime):] == runtime and list(to_dict(cls()))[-len(runtime):] == runtime
    assert CIFAR_RESUMABLE == (*RESUMABLE_FIELDS, "data_dir", "download", "skip_bad_images")
    assert FACE_RESUMABLE == (*CIFAR_RESUMABLE, "protocol_dir")
    assert set(RESUMABLE_FIELDS) < set(runtime) and not {"seed", "precision", "channels_last"} & set(RESUMABLE_FIELDS)


def test_each_study_keeps_its_own_runtime_defaults_and_help():
    import dataclasses

    help_of = lambda cls, name: next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)
    assert CifarTrainConfig().eval_batch_size == 1000 and FaceTrainConfig().eval_batch_size == 256
    assert help_of(CifarTrainConfig, "seed") == "seed for the split, initialisation, shuffling and augmentation"
    assert help_of(FaceTrainConfig, "seed") == "seed for the split, pairs, initialisation and augmentation"
    assert help_of(FaceTrainConfig, "eval_batch_size") == "batch size for embedding validation and test images"


def test_a_config_saved_before_the_runtime_fields_were_shared_still_loads(tmp_path):
    from cnnlab.config import load_yaml

    saved = tmp_path / "config.yaml"  # a face run's config.yaml, runtime fields last, as written then
    saved.write_text("data_dir: data/lfw\nloss: triplet\nmargin: 0.3\nminer: semi-hard\nepochs: 2\n"
                     "seed: 7\ndevice: cpu\nprecision: fp32\nchannels_last: null\ncompile: false\n"
                     "eval_batch_size: 128\n")
    cfg = from_dict(FaceTrainConfig, load_yaml(saved), source=str(saved))
    assert (cfg.loss, cfg.margin, cfg.miner, cfg.seed, cfg.device, cfg.eval_batch_size) == \
        ("triplet", 0.3, "semi-hard", 7, "cpu", 128)
