"""A study spends its time training: after it, nothing is loaded twice and the t-SNE stays on its sample."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cnnlab.cifar.evaluate as ev
from cnnlab.commands.main import main


def test_a_study_loads_its_data_once_and_each_best_checkpoint_once_per_use(cifar_batches, tmp_path, monkeypatch):
    import cnnlab.cifar.train
    import cnnlab.data.cifar10
    import cnnlab.engine
    import cnnlab.inference.runs
    import cnnlab.run

    loads, checkpoints, tsne = Counter(), Counter(), []
    real_data = cnnlab.data.cifar10.load_cifar10

    def counted_data(*args, **kw):
        loads["data"] += 1
        return real_data(*args, **kw)

    for module in (cnnlab.data.cifar10, cnnlab.cifar.train, ev):
        monkeypatch.setattr(module, "load_cifar10", counted_data)
    for module in (cnnlab.run, cnnlab.engine, cnnlab.inference.runs):
        def counted_checkpoint(path, *args, _real=module.load_checkpoint, **kw):
            checkpoints[Path(path).name] += 1
            return _real(path, *args, **kw)

        monkeypatch.setattr(module, "load_checkpoint", counted_checkpoint)
    real_tsne = ev.tsne_2d
    monkeypatch.setattr(ev, "tsne_2d", lambda features, seed=0: tsne.append(len(features)) or real_tsne(features, seed))

    study = tmp_path / "study"
    assert main(["cifar", "compare", "--blocks", "A,E", "--width", "0.125", "--epochs", "1", "--batch-size", "32",
                 "--tsne-samples", "25", "--data-dir", str(cifar_batches), "--out", str(study)]) == 0
    assert loads["data"] == 1  # two trainings, two evaluations and the data figures
    # Per variant: the test after training and the evaluation each load best.pt once.
    assert checkpoints["best.pt"] == 2 * 2
    assert tsne == [25, 25]  # the bounded sample, not the whole test set
    assert (study / "runs" / "E-seed0" / "figures" / "tsne.png").is_file()


def test_data_figures_show_the_augmentation_asked_for(cifar_batches, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["cifar", "data-figures", "--augment", "crop-flip", "--data-dir", str(cifar_batches),
                 "--out", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(out / n) for n in ev.DATA_FIGURES[:2]]  # the jitter/affine draws are the study's only
