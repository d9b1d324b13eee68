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
