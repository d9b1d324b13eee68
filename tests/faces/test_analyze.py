import json
import shutil

import pytest

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.faces.analyze import FIGURES, analyze, read_test_pairs, redraw_figures
from cnnlab.files import load_checkpoint
from cnnlab.metrics import roc_auc


def test_analyze_writes_every_figure_scores_and_a_report(run_copy, capsys):
    assert main(["faces", "analyze", str(run_copy), "--device", "cpu", "--log-far", "-k", "3"]) == 0
    for name in FIGURES:
        png = run_copy / "figures" / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    s = json.loads((run_copy / "summary.json").read_text())
    assert 0 <= s["precision_at_1"] <= 1 and 0 <= s["map_at_r"] <= 1 and s["retrieval_queries"] > 0
    nb = load_checkpoint(run_copy / "neighbours.pt")
    q = len(nb["query"])
    assert 1 <= q <= 5 and nb["neighbours"].shape == (q, 3)
    assert nb["thumbnails"].shape == (q, 4, 3, 32, 32)
    saved = load_checkpoint(run_copy / "test_embeddings.pt")
    labels = saved["labels"]
    assert (nb["correct"] == (labels[nb["neighbours"]] == labels[nb["query"]][:, None])).all()
    assert nb["query_names"] == [saved["names"][int(labels[i])] for i in nb["query"]]
    assert (run_copy / "report.md").is_file() and "ROC AUC" in (run_copy / "report.html").read_text()
    assert "figures:" in capsys.readouterr().out


def test_figures_are_redrawn_without_the_model_or_the_data(run_copy, finished_run, tmp_path):
    analyze(run_copy, device="cpu")
    shutil.rmtree(run_copy / "checkpoints")
    shutil.rmtree(run_copy / "figures")
    # The images themselves are gone too: the neighbour grid comes from neighbours.pt.
    moved = shutil.move(str(finished_run.parent / "faces"), str(tmp_path / "elsewhere"))
    try:
        assert main(["faces", "figures", str(run_copy)]) == 0
        assert sorted(p.name for p in (run_copy / "figures").iterdir()) == sorted(FIGURES)
    finally:
        shutil.move(moved, str(finished_run.parent / "faces"))


def test_saved_pairs_reproduce_the_reported_auc(finished_run):
    pairs = read_test_pairs(finished_run / "test_pairs.csv")
    s = json.loads((finished_run / "summary.json").read_text())
    assert roc_auc(pairs["distance"], pairs["same"]) == pytest.approx(s["roc_auc"], abs=1e-9)


def test_missing_test_files_are_recomputed_from_the_best_checkpoint(run_copy):
    before = (run_copy / "test_pairs.csv").read_text()
    (run_copy / "test_pairs.csv").unlink()
    (run_copy / "test_embeddings.pt").unlink()
    analyze(run_copy, device="cpu")
    assert (run_copy / "test_pairs.csv").read_text() == before


def test_redraw_skips_what_is_missing(run_copy):
    (run_copy / "test_pairs.csv").unlink()
    paths = redraw_figures(run_copy)
    assert [p.name for p in paths] == ["loss_curves.png"]


def test_analyze_of_an_unfinished_run_is_a_clear_error(run_copy):
    (run_copy / "summary.json").unlink()
    with pytest.raises(CnnlabError, match="not a finished run"):
        analyze(run_copy)


def test_analyze_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["faces", "analyze", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_figures_warns_when_the_best_checkpoint_moved_on(run_copy, caplog):
    import logging

    from cnnlab.files import atomic_torch_save

    lg = logging.getLogger("cnnlab.faces.analyze")  # the CLI keeps "cnnlab" records to its own handler
    lg.addHandler(caplog.handler)
    try:
        analyze(run_copy, device="cpu")
        tested = json.loads((run_copy / "summary.json").read_text())["best_epoch"]
        redraw_figures(run_copy)
        assert "out of date" not in caplog.text
        best = load_checkpoint(run_copy / "checkpoints" / "best.pt")
        atomic_torch_save({**best, "epoch": tested + 5}, run_copy / "checkpoints" / "best.pt")  # trained on
        redraw_figures(run_copy)
    finally:
        lg.removeHandler(caplog.handler)
    for name in ("test_pairs.csv", "neighbours.pt"):
        assert (f"{name} comes from the best checkpoint of epoch {tested}, but the run's best checkpoint is now "
                f"epoch {tested + 5}") in caplog.text
