import json

import numpy as np
import pytest

from cnnlab.commands.main import main
from cnnlab.errors import ConfigError, DataError
from cnnlab.faces.evaluate import evaluate_pairs
from cnnlab.inference.faces import FaceVerifier
from cnnlab.metrics import kfold_accuracy
from cnnlab.report import fmt

from .conftest import write_pairs

FOLDS = [
    ([("Person_A", 1, 2), ("Person_B", 3, 4), ("Person_C", 1, 4)],
     [("Person_A", 1, "Person_D", 1), ("Person_E", 2, "Person_F", 3), ("Person_G", 4, "Solo_X", 1)]),
    ([("Person_H", 1, 3), ("Person_I", 2, 4), ("Person_J", 1, 2)],
     [("Person_H", 2, "Person_I", 1), ("Person_J", 3, "Solo_Y", 1), ("Person_B", 1, "Person_C", 2)]),
]


def test_view2_accuracy_is_the_10_fold_protocol_on_the_run_distances(finished_run, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.txt", FOLDS)
    faces = finished_run.parent / "faces"
    # Runs on a copy: evaluate writes into the run's summary.json.
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    assert main(["faces", "evaluate", str(run), "--pairs", str(pairs), "--device", "cpu"]) == 0
    printed, logged = capsys.readouterr()
    assert logged.count(" faces of ") == 1  # the face set is loaded (and announced) once
    lines = printed.splitlines()
    assert lines[0].startswith("LFW accuracy") and lines[1] == f"summary: {run / 'summary.json'}"
    # No report yet (analyze writes it): the line says which command does.
    assert lines[2] == f"report: none yet (cnnlab faces analyze {run} writes it, with this evaluation)"
    assert "LFW View 2 accuracy" not in logged  # the numbers print once, on stdout
    s = json.loads((run / "summary.json").read_text())

    dist, same, fold = [], [], []
    fv = FaceVerifier.from_run(run, device="cpu")
    for f, (matched, mismatched) in enumerate(FOLDS):
        for name, i, j in matched:
            dist.append(fv.verify(faces / name / f"{name}_{i:04d}.jpg", faces / name / f"{name}_{j:04d}.jpg")
                        ["distance"])
            same.append(1)
            fold.append(f)
        for n1, i, n2, j in mismatched:
            dist.append(fv.verify(faces / n1 / f"{n1}_{i:04d}.jpg", faces / n2 / f"{n2}_{j:04d}.jpg")["distance"])
            same.append(0)
            fold.append(f)
    expected = kfold_accuracy(np.array(dist), np.array(same), np.array(fold))
    assert s["lfw_accuracy_mean"] == pytest.approx(expected.mean)
    assert s["lfw_accuracy_std"] == pytest.approx(expected.std)
    assert s["lfw_folds"] == 2 and s["lfw_num_pairs"] == 12 and len(s["lfw_fold_accuracies"]) == 2
    assert s["lfw_pairs_with_training_people"] is not None and 0 <= s["lfw_pairs_with_training_people"] <= 12
    assert s["roc_auc"] is not None  # the View 1 / split figures stay
    lines = (run / "lfw_view2_pairs.csv").read_text().splitlines()
    assert len(lines) == 13 and lines[1].startswith("0,1,")


def test_evaluate_prints_where_the_report_it_adds_to_went(finished_run, tmp_path, capsys):
    import shutil

    from cnnlab.faces.analyze import analyze

    run = shutil.copytree(finished_run, tmp_path / "run")
    analyze(run, device="cpu")
    pairs = write_pairs(tmp_path / "pairs.txt", FOLDS)
    assert main(["faces", "evaluate", str(run), "--pairs", str(pairs), "--device", "cpu"]) == 0
    s = json.loads((run / "summary.json").read_text())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"ROC AUC {fmt(s['lfw_roc_auc'])}")  # as the report's table writes it
    assert lines[1:] == [f"summary: {run / 'summary.json'}", f"report: {run / 'report.md'}, {run / 'report.html'}"]
    assert f"| ROC AUC (all pairs at once) | {fmt(s['lfw_roc_auc'])} |" in (run / "report.md").read_text()


def test_a_single_fold_file_is_refused(finished_run, tmp_path):
    pairs = write_pairs(tmp_path / "pairsDevTest.txt", FOLDS[:1], view1=True)
    with pytest.raises(ConfigError, match="single fold"):
        evaluate_pairs(finished_run, pairs, device="cpu")


def test_a_pair_naming_a_missing_person_names_the_line(finished_run, tmp_path):
    bad = [(FOLDS[0][0], FOLDS[0][1][:2] + [("Person_G", 4, "Nobody", 1)]), FOLDS[1]]
    pairs = write_pairs(tmp_path / "pairs.txt", bad)
    with pytest.raises(DataError, match=r"pairs.txt, line 7: no person folder 'Nobody'"):
        evaluate_pairs(finished_run, pairs, device="cpu")


def test_real_lfw_sample_trains_and_evaluates_view2(shared_datasets, tmp_path):
    from cnnlab.faces.train import train

    from .conftest import tiny_config

    sample = shared_datasets / "lfw-sample"
    run = tmp_path / "run"
    s = train(tiny_config(sample / "people", image_size=32, crop=0.6), run, progress=False)
    assert s["num_train_people"] + s["num_val_people"] + s["num_test_people"] == 80
    r = evaluate_pairs(run, sample / "pairs.txt", device="cpu", progress=False)
    assert r["lfw_folds"] == 2 and r["lfw_num_pairs"] == 200 and 0 <= r["lfw_accuracy_mean"] <= 1
