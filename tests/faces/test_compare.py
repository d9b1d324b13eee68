import re

from cnnlab.commands.main import main
from cnnlab.faces.train import train

from .conftest import tiny_config


def test_compare_two_runs_writes_a_self_contained_report(face_dir, tmp_path, capsys):
    train(tiny_config(face_dir, margin=1.0), tmp_path / "margin1", progress=False)
    train(tiny_config(face_dir, margin=2.0), tmp_path / "margin2", progress=False)
    out = tmp_path / "cmp"
    assert main(["faces", "compare", str(tmp_path / "margin1"), str(tmp_path / "margin2"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "margin1" in printed and "margin2" in printed and "ROC AUC" in printed
    for f in ("report.md", "report.html", "comparison.csv", "roc.png", "roc_log.png", "val_roc_auc.png"):
        assert (out / f).is_file(), f
    html = (out / "report.html").read_text()
    assert "margin1" in html and "margin2" in html
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith("data:") for s in sources)  # nothing outside the page
    assert "http" not in "".join(sources)
    rows = (out / "comparison.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("run,path,loss,margin")
    assert ",1.0," in rows[1] and ",2.0," in rows[2]


def test_compare_refuses_an_unfinished_run(face_dir, tmp_path, capsys):
    train(tiny_config(face_dir), tmp_path / "a", progress=False)
    (tmp_path / "a" / "summary.json").unlink()
    assert main(["faces", "compare", str(tmp_path / "a"), "--out", str(tmp_path / "cmp")]) == 2
    assert "not a finished face run" in capsys.readouterr().err
