import re

import pytest

from cnnlab.cifar import compare as compare_mod
from cnnlab.cifar.compare import compare, parse_seeds, parse_variants, read_comparison
from cnnlab.commands.main import main
from cnnlab.config import CifarTrainConfig
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.run import RunDir

TINY = dict(width=0.125, batch_size=32, epochs=1)  # as the CLI call in `study`


def _base(data_dir, **kw):
    return CifarTrainConfig(data_dir=str(data_dir), **{**TINY, **kw})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A two-variant study (A, E) trained once and evaluated, on tiny official batches."""
    from tests.conftest import write_cifar_batches

    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    write_cifar_batches(data)
    out = root / "study"
    rc = main(["cifar", "compare", "--blocks", "A,E", "--width", "0.125", "--epochs", "1", "--batch-size", "32",
               "--tsne-samples", "30", "--data-dir", str(data), "--out", str(out)])
    assert rc == 0
    return data, out


def test_compare_writes_table_and_self_contained_report(study):
    _, out = study
    rows = read_comparison(out)
    assert [r["variant"] for r in rows] == ["A", "E"]
    assert rows[0]["params"] > rows[1]["params"] > 0 and rows[0]["macs"] > rows[1]["macs"]
    md = (out / "comparison.md").read_text()
    assert "trainable params" in md and "| A" in md and "| E" in md
    html = (out / "report.html").read_text()
    assert "A" in html and "E" in html and "<table>" in html
    # Self-contained: every image is a data: URI; no links to files or the web.
    srcs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "tsne" in (out / "report.md").read_text()
    for f in ("figures/curves.png", "data-figures/augmented_samples.png", "runs/A-seed0/figures/tsne.png"):
        assert (out / f).is_file(), f


def test_compare_reuses_finished_runs(study, monkeypatch):
    data, out = study

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare_mod, "train", no_training)
    rows = compare(_base(data), ["A", "E"], out, evaluate=False)
    assert len(rows) == 2


def test_best_is_chosen_by_validation_not_test(study, tmp_path, monkeypatch):
    data, out = study
    # Make E better on validation and A better on test.
    for variant, val, test in (("A", 0.30, 0.90), ("E", 0.60, 0.10)):
        run = RunDir(out / "runs" / f"{variant}-seed0")
        run.update_summary(best_val_accuracy=val, test_accuracy=test)
    compare(_base(data), ["A", "E"], out, evaluate=False)
    assert "Best variant by validation accuracy: **E**" in (out / "comparison.md").read_text()
    assert "**E**" in (out / "report.md").read_text()


def test_a_run_with_other_options_is_not_silently_reused(study):
    data, out = study
    with pytest.raises(CnnlabError, match="holds a run with other options.*lr"):
        compare(_base(data, lr=0.5), ["A"], out, evaluate=False)


def test_several_seeds_give_mean_and_std(cifar_batches, tmp_path):
    out = tmp_path / "s"
    rows = compare(_base(cifar_batches), ["E"], out, seeds=[0, 1], evaluate=False)
    assert rows[0]["seeds"] == 2 and rows[0]["best_val_accuracy_std"] >= 0
    assert (out / "runs" / "E-seed1" / "summary.json").is_file()
    assert "±" in (out / "comparison.md").read_text()


@pytest.mark.parametrize("text, message", [("A,A", "listed twice"), ("A,Q", "not a block name"), (",", "give")])
def test_bad_variant_lists(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_variants(text)


def test_seed_lists():
    assert parse_seeds("0,1,2", 5) == [0, 1, 2] and parse_seeds(None, 5) == [5]
    with pytest.raises(ConfigError, match="^seeds 'a,b'") as e:  # the library names the parameter
        parse_seeds("a,b", 0)
    assert e.value.worded(lambda name: f"--{name}").startswith("--seeds 'a,b'")  # the command line, its flag


def test_compare_prints_its_table_with_integer_counts_and_where_it_wrote(study, capsys):
    data, out = study
    assert main(["cifar", "compare", "--blocks", "A,E", "--width", "0.125", "--epochs", "1", "--batch-size", "32",
                 "--no-evaluate", "--data-dir", str(data), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r[0].split()[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:4])}
    params = rows["A"][header.index("trainable params")]
    assert re.fullmatch(r"\d{1,3}(,\d{3})+", params), params  # not 125834.0000
    assert rows["E"][header.index("best epoch")] == "1"
    assert re.fullmatch(r"\d+", rows["A"][header.index("train time (s)")])
    assert lines[-1] == f"report: {out / 'report.md'}, {out / 'report.html'}"
    assert sum("report.html" in line for line in lines) == 1
