import json
import shutil

import pytest

from cnnlab.commands.main import main
from cnnlab.errors import CnnlabError
from cnnlab.faces.analyze import FIGURES, analyze, read_test_pairs, redraw_figures
from cnnlab.files import load_checkpoint
from cnnlab.metrics import roc_auc
from cnnlab.report import far_caveat, fmt


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
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"figures: {run_copy / 'figures'}",
                          f"report: {run_copy / 'report.md'}, {run_copy / 'report.html'}"]
    # A few test pairs cannot resolve FAR = 1e-3: the number prints with the caveat the report gives.
    caveat = far_caveat(s)
    assert s["tar_at_far_1e-3_resolved"] is False and caveat.startswith("FAR = 1e-3 cannot be resolved with ")
    assert f"with {s['num_test_pairs'] - s['num_test_pairs_same']:,} different-people test pairs" in caveat
    assert f"  tar_at_far_1e-3 {fmt(s['tar_at_far_1e-3'])}  " in lines[0] and lines[1] == f"tar_at_far_1e-3: {caveat}"
    assert caveat in (run_copy / "report.md").read_text()
    assert "| metric | value |" in (run_copy / "report.md").read_text()


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
# --- the run's report --------------------------------------------------------------------


def _report(run) -> str:
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and 'src="figures/' not in page  # self-contained
    return md


def test_report_reads_naturally_and_says_how_the_run_was_made(run_copy):
    analyze(run_copy, device="cpu")
    s = json.loads((run_copy / "summary.json").read_text())
    md = _report(run_copy)
    assert f"{s['num_test_pairs']} test pairs" in md and f"drawn from {s['num_test_people']} held-out people" in md
    assert "protocol)" not in md
    assert f"{s['num_train_images']} images of {s['num_train_people']} people" in md
    assert f"Trained on **{s['device']}** in {s['precision']}" in md
    # Training seconds rounded; the report's own command (called from Python here).
    assert f"| training time | {round(s['train_seconds'])} s |" in md
    assert "This report: `cnnlab.faces.analyze` (Python)." in md


PAIRS = [
    ([("Person_A", 1, 2), ("Person_B", 3, 4)], [("Person_A", 1, "Person_D", 1), ("Person_E", 2, "Solo_X", 1)]),
    ([("Person_H", 1, 3), ("Person_I", 2, 4)], [("Person_H", 2, "Person_I", 1), ("Person_J", 3, "Solo_Y", 1)]),
]


@pytest.mark.parametrize("order", ["evaluate, then analyze", "analyze, then evaluate"])


def test_report_keeps_the_pairs_evaluation_in_either_order(run_copy, tmp_path, order):
    from cnnlab.faces.evaluate import evaluate_pairs

    from .conftest import write_pairs

    pairs = write_pairs(tmp_path / "my_pairs.txt", PAIRS)
    steps = [lambda: evaluate_pairs(run_copy, pairs, device="cpu", progress=False),
             lambda: analyze(run_copy, device="cpu")]
    for step in steps if order.startswith("evaluate") else steps[::-1]:
        step()
    s = json.loads((run_copy / "summary.json").read_text())
    md = _report(run_copy)
    assert "## Pairs evaluation" in md
    assert f"| accuracy (mean ± std over the folds) | {s['lfw_accuracy_mean']:.4f} ± {s['lfw_accuracy_std']:.4f} |" in md
    assert "| folds | 2 |" in md and "| pairs | 8 |" in md
    assert f"`{pairs.resolve()}`" in md
    seen = s["lfw_pairs_with_training_people"]
    assert isinstance(seen, int) and f"| pairs holding a person seen in training | {seen} of 8 |" in md
    # Not LFW's own pairs.txt: never called LFW View 2.
    assert "LFW View 2" not in md and "the pairs of `my_pairs.txt`" in md


def test_figures_keep_the_far_axis_the_run_was_analysed_with(run_copy, monkeypatch):
    from cnnlab.viz import faces as viz

    analyze(run_copy, device="cpu", log_far=True)
    assert json.loads((run_copy / "summary.json").read_text())["roc_log_far"] is True
    chosen = []
    real = viz.plot_roc
    monkeypatch.setattr(viz, "plot_roc", lambda curves, path, log_far=False, title="":
                        chosen.append(log_far) or real(curves, path, log_far=log_far, title=title))
    assert main(["faces", "figures", str(run_copy)]) == 0
    assert main(["faces", "figures", str(run_copy), "--no-log-far"]) == 0  # an explicit choice is kept too
    assert main(["faces", "figures", str(run_copy)]) == 0
    assert chosen == [True, False, False]
