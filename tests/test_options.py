from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.commands.options import (DEVICE, add_command, add_config_args, arg, build_config, config_options, print_result,
                            train_args, train_command)


@dataclass
class _Tiny:
    epochs: int = field(default=3, metadata={"help": "passes over the data"})
    mean: tuple[float, ...] = (0.5, 0.5)
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    amp: bool = False
    seed: int | None = None


def _one_command(**kw) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    root = argparse.ArgumentParser(prog="tool")
    sub = root.add_subparsers(dest="command", required=True)
    kw.setdefault("help", "does it")
    kw.setdefault("description", "Does it, " + "at length " * 12 + "and stops.")
    return root, add_command(sub, "go", lambda a: 7, **kw)


def test_add_command_adds_its_arguments_in_order_and_its_function():
    root, p = _one_command(args=[arg("run_dir", metavar="RUN_DIR"), arg("--n", type=int, default=3), DEVICE,
                                 lambda q: q.add_argument("--extra")])
    args = root.parse_args(["go", "runs/a", "--n", "4", "--extra", "x"])
    assert (args.run_dir, args.n, args.device, args.extra, args.func(args)) == ("runs/a", 4, "auto", "x", 7)
    assert [a.dest for a in p._actions] == ["help", "run_dir", "n", "device", "extra"]


def test_examples_are_shown_as_written_under_one_heading():
    _, p = _one_command(examples=["tool go a"])
    assert p.epilog == "example:\n  tool go a"
    _, p = _one_command(examples=["tool go a", "tool go b"], notes="file.yaml:\n  k: v")
    assert p.epilog == "examples:\n  tool go a\n  tool go b\n\nfile.yaml:\n  k: v"
    assert p.formatter_class is argparse.RawDescriptionHelpFormatter
    assert "  tool go b\n" in p.format_help()


def test_without_examples_the_description_is_wrapped():
    _, p = _one_command()
    assert p.epilog is None and p.formatter_class is argparse.HelpFormatter
    assert all(len(line) <= 100 for line in p.format_help().splitlines())


def test_config_options_only_put_given_options_in_the_namespace():
    root = argparse.ArgumentParser()
    config_options(_Tiny, exclude=("seed",))(root)
    assert vars(root.parse_args([])) == {}
    args = root.parse_args(["--epochs", "5", "--mean", "0.1", "0.2", "0.3", "--mode", "b", "--amp"])
    assert vars(args) == {"epochs": 5, "mean": [0.1, 0.2, 0.3], "mode": "b", "amp": True}
    with pytest.raises(SystemExit):
        root.parse_args(["--seed", "1"])
    with pytest.raises(SystemExit):
        root.parse_args(["--mode", "c"])
    help_text = root.format_help()
    assert "passes over the data (default: 3)" in help_text and "--no-amp" in help_text


def test_config_field_without_default_shows_auto():
    root = argparse.ArgumentParser()
    add_config_args(root, _Tiny)
    assert "(default: auto)" in root.format_help()


def test_build_config_takes_options_over_the_file(tmp_path):
    root = argparse.ArgumentParser()
    for spec in train_args(_Tiny):
        spec(root)
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 9\nmode: b\n")
    cfg = build_config(_Tiny, root.parse_args(["--config", str(f), "--epochs", "2", "--mean", "1", "2"]))
    assert cfg == _Tiny(epochs=2, mean=(1.0, 2.0), mode="b")


def test_train_command_starts_or_resumes_and_names_the_missing_flag():
    root = argparse.ArgumentParser()
    for spec in train_args(_Tiny):
        spec(root)
    calls = []

    def train(cfg, run_dir, resume=False):
        calls.append((cfg, run_dir, resume))
        return {}

    def resume_config(run_dir, overrides):
        return _Tiny(**overrides)

    train_command(root.parse_args(["--out", "r", "--epochs", "1"]), _Tiny, resume_config, train, "t train")
    train_command(root.parse_args(["--resume", "r", "--epochs", "4"]), _Tiny, resume_config, train, "t train")
    assert calls == [(_Tiny(epochs=1), "r", False), (_Tiny(epochs=4), "r", True)]
    with pytest.raises(CnnlabError, match="t train: give --out RUN_DIR"):
        train_command(root.parse_args([]), _Tiny, resume_config, train, "t train")


def test_print_result_prints_the_numbers_it_has(capsys):
    print_result({"acc": 0.123456, "n": 3, "flag": True, "none": None}, ("acc", "n", "flag", "none", "absent"))
    assert capsys.readouterr().out == "acc 0.1235  n 3\n"
    print_result({}, ("acc",))
    assert capsys.readouterr().out == ""


def test_print_result_ends_with_where_the_results_went(capsys):
    print_result({"n": 488594.0, "margin": 1.0, "train_seconds": 1823.4}, ("n", "margin", "train_seconds"),
                 where={"run": "runs/a", "report": "runs/a/report.html"})
    assert capsys.readouterr().out == "n 488,594  margin 1  train_seconds 1,823\nrun: runs/a\nreport: runs/a/report.html\n"


def test_headline_numbers_print_as_the_reports_write_them(capsys):
    from cnnlab.report import seconds

    for s in (13.4, 1851.2):  # one format, short run or long: whole seconds, thousands separated
        print_result({"train_seconds": s, "roc_auc": 0.90001}, ("roc_auc", "train_seconds"))
        line = capsys.readouterr().out
        assert line == f"roc_auc 0.9  train_seconds {seconds(s).split(' s')[0]}\n"
    assert seconds(1851.2).startswith("1,851 s") and seconds(13.4) == "13 s"


def test_a_note_prints_under_the_number_it_qualifies(capsys):
    notes = {"tar": "cannot be resolved here", "absent": "never printed"}
    print_result({"tar": 0.0, "auc": 0.5}, ("auc", "tar"), where={"run": "runs/a"}, notes=notes)
    assert capsys.readouterr().out == "auc 0.5  tar 0\ntar: cannot be resolved here\nrun: runs/a\n"
    print_result({"auc": 0.5}, ("auc",), notes={"tar": "unprinted number: no note"})
    assert capsys.readouterr().out == "auc 0.5\n"


def test_a_place_may_be_several_files(capsys):
    print_result({}, (), where={"report": ("r/report.md", "r/report.html"), "figures": "r/figures"})
    assert capsys.readouterr().out == "report: r/report.md, r/report.html\nfigures: r/figures\n"


@dataclass
class _Switch:
    channels_last: bool | None = field(default=None, metadata={"help": "memory format", "auto": True})


@pytest.mark.parametrize("argv, value", [
    ([], "unset"), (["--channels-last", "auto"], None), (["--channels-last", "on"], True),
    (["--channels-last", "off"], False), (["--channels-last"], True), (["--no-channels-last"], False),
])
def test_a_switch_whose_none_means_auto_takes_auto_on_and_off(argv, value):
    root = argparse.ArgumentParser()
    add_config_args(root, _Switch)
    assert vars(root.parse_args(argv)).get("channels_last", "unset") == value


def test_a_switch_refuses_another_word_naming_what_it_takes(capsys):
    root = argparse.ArgumentParser()
    add_config_args(root, _Switch)
    with pytest.raises(SystemExit):
        root.parse_args(["--channels-last", "yes"])
    assert "--channels-last: expected auto, on or off, got 'yes'" in capsys.readouterr().err
    assert "--channels-last [{auto,on,off}]" in root.format_help()


def test_channels_last_auto_is_run_and_saved_as_auto(tmp_path):
    import yaml

    from cnnlab.commands.main import build_parser
    from cnnlab.config import CifarTrainConfig, save_yaml
    from cnnlab.report import config_table

    args = build_parser().parse_args(["cifar", "train", "--out", "r", "--channels-last", "auto"])
    cfg = build_config(CifarTrainConfig, args)
    assert cfg.channels_last is None
    save_yaml(cfg, tmp_path / "config.yaml")  # null: what every cnnlab reads as auto
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["channels_last"] is None
    again = build_parser().parse_args(["cifar", "train", "--out", "r", "--config", str(tmp_path / "config.yaml")])
    assert build_config(CifarTrainConfig, again).channels_last is None
    assert ["channels_last", "auto"] in config_table(cfg).rows
    on = build_parser().parse_args(["cifar", "train", "--out", "r", "--channels-last", "on"])
    assert ["channels_last", "True"] in config_table(build_config(CifarTrainConfig, on)).rows
