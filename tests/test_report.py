import math

import pytest

from cnnlab.report import Section, fmt, markdown_table, provenance, seconds, write_report
from cnnlab.run import command_line


@pytest.mark.parametrize("value, text", [(54.2091, "54 s"), (324.1162, "324 s (5.4 min)"),
                                         (9000.0, "9,000 s (2.5 h)"), (float("nan"), "–"), (None, "–")])
def test_seconds_are_rounded_for_a_reader(value, text):
    assert seconds(value) == text


@pytest.mark.parametrize("argv, line", [
    (["/venv/bin/cnnlab", "cifar", "evaluate", "runs/my run"], "cnnlab cifar evaluate 'runs/my run'"),
    (["/src/cnnlab/__main__.py", "faces", "analyze", "r"], "cnnlab faces analyze r"),
    (["/usr/bin/pytest", "-q"], None),
])
def test_command_line_is_the_cnnlab_command_or_none(argv, line):
    assert command_line(argv) == line


def test_provenance_names_device_precision_and_both_commands(monkeypatch):
    summary = {"device": "NVIDIA H200", "precision": "bf16", "channels_last": True, "world_size": 4,
               "torch": "2.9", "cnnlab": "0.1.0", "command": "cnnlab cifar train --blocks A --out runs/A"}
    text = provenance(summary, "cifar", "cnnlab cifar evaluate runs/A", "x").text
    assert "Trained on **NVIDIA H200** in bf16 with channels-last memory, 4 processes" in text
    assert "Trained by `cnnlab cifar train --blocks A --out runs/A`." in text
    assert "This report: `cnnlab cifar evaluate runs/A`." in text
    old = provenance({}, "faces", None, "cnnlab.faces.analyze").text
    assert "not recorded" in old and "`cnnlab faces train --config config.yaml`" in old
    assert "`cnnlab.faces.analyze` (Python)" in old


def test_report_html_is_self_contained(tmp_path):
    from cnnlab.report import Figure
    from cnnlab.viz.common import figure, save

    fig, _ = figure()
    png = save(fig, tmp_path / "figures" / "a.png")
    md, page = write_report(tmp_path, "T", [Section("S", "**bold** text", [Figure(png, "cap")])])
    assert "](figures/a.png)" in md.read_text()
    html = page.read_text()
    assert "data:image/png;base64," in html and "figures/a.png" not in html and "<strong>bold</strong>" in html


@pytest.mark.parametrize("value, text", [
    (488594, "488,594"),
    (488594.0, "488,594"),  # a count read back from a CSV file as a float
    (1.0, "1"),  # a margin
    (0.2, "0.2"),
    (0.72061, "0.7206"),
    (0.24100, "0.241"),
    (1234.5, "1,234.5"),
    (0.00001234, "1.234e-05"),  # never rounded to a bare 0
    (math.nan, "–"),
    (None, ""),
    (True, "True"),
    ("A (best)", "A (best)"),
])
def test_cells_print_counts_as_integers_and_numbers_without_padding_zeros(value, text):
    assert fmt(value) == text


def test_markdown_table_formats_every_cell():
    assert markdown_table(["run", "params", "margin"], [["a", 488594.0, 2.0]]).splitlines()[-1] == \
        "| a | 488,594 | 2 |"


@pytest.mark.parametrize("key, value, text", [
    ("train_seconds", 13.4, "13"), ("train_seconds", 1851.2, "1,851"), ("train_seconds", 9000.0, "9,000"),
    ("roc_auc", 0.91234, "0.9123"), ("best_epoch", 12, "12"), ("num_train", 45000.0, "45,000"),
    ("train_seconds", None, ""),
])
def test_headline_numbers_have_one_format(key, value, text):
    from cnnlab.report import headline

    assert headline(key, value) == text
    if key == "train_seconds" and value is not None:
        assert seconds(value).startswith(f"{text} s")  # the report's training time says the same number


def test_the_far_caveat_counts_the_different_people_pairs():
    from cnnlab.report import far_caveat

    summary = {"tar_at_far_1e-3_resolved": False, "num_test_pairs": 1500, "num_test_pairs_same": 1088}
    assert far_caveat(summary) == ("FAR = 1e-3 cannot be resolved with 412 different-people test pairs (it needs "
                                   "at least 1,000), so TAR @ FAR = 1e-3 is the TAR at FAR = 0")
    assert "with fewer than 1,000 different-people" in far_caveat({"tar_at_far_1e-3_resolved": False})
    assert far_caveat({**summary, "tar_at_far_1e-3_resolved": True}) is None
    assert far_caveat({}) is None  # a summary that does not say: no caveat
    assert far_caveat({"backbone_tar_at_far_1e-3_resolved": False}, prefix="backbone_") is not None


def test_report_tables_head_their_first_column(tmp_path):
    from cnnlab.config import CifarTrainConfig
    from cnnlab.report import METRIC_COLUMNS, Table, config_table

    md, page = write_report(tmp_path, "T", [Section("S", "", [Table(METRIC_COLUMNS, [["ROC AUC", 0.9]]),
                                                             config_table(CifarTrainConfig())])])
    text, html = md.read_text(), page.read_text()
    assert "| metric | value |\n|---|---:|\n| ROC AUC | 0.9 |" in text and "<th>metric</th>" in html
    assert "| option | value |" in text and "| channels_last | auto |" in text
    assert "| max_train_samples | None |" in text  # None that is no auto stays as it is
