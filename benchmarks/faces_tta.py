"""What flip test-time augmentation is worth: each run's View 1 test pairs scored without and with it, side by side.

    python benchmarks/faces_tta.py DATA_DIR RUN [RUN ...] [--json FILE]

DATA_DIR is LFW with its protocol files (as for ``--protocol lfw-view1``).
Each RUN (a finished face run) embeds the images of the 1,000 test pairs of
``pairsDevTest.txt`` twice with its best checkpoint: the image alone, and the
mean of the image's and its mirror image's embeddings (what ``--flip-tta``
makes the run's network do). The weights are the same; only inference
differs. Columns: ROC AUC, EER and accuracy at the run's own threshold (chosen
on its validation pairs with the run's own setting) for each, and the
difference in ROC AUC. Faces are found as the run was trained.

Time: about 1 minute per run on 2 cores at 112 px (about 1,700 images embedded
three times: alone, and the image and its mirror), plus finding the faces once
for a run trained with ``--align auto`` (cached).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def score(run_dir: str, data_dir: Path) -> dict:
    """The run's View 1 test scores without and with flip TTA."""
    from cnnlab.data.faces import find_people_root, list_faces, load_faces
    from cnnlab.data.lfw import read_pairs, resolve_pairs
    from cnnlab.inference.faces import FaceVerifier
    from cnnlab.metrics import accuracy_at_threshold, equal_error_rate, pair_distances, roc_auc

    fv = FaceVerifier.from_run(run_dir, device="cpu")
    pairs = read_pairs(data_dir / "pairsDevTest.txt")
    listing = list_faces(find_people_root(data_dir))
    i, j = resolve_pairs(pairs, listing)
    used = torch.unique(torch.cat([i, j]))
    faces = load_faces(listing.only(used), image_size=fv.cfg.image_size, crop=fv.cfg.crop, align=fv.align)
    i, j = torch.searchsorted(used, i), torch.searchsorted(used, j)
    row = {"run": run_dir, "trained with flip TTA": bool(fv.cfg.flip_tta)}
    for tta in (False, True):
        fv.model.flip_tta = tta
        d = pair_distances(fv.network(faces.images), i, j)
        key = "flip TTA" if tta else "plain"
        row[f"{key} roc_auc"] = roc_auc(d, pairs.same)
        row[f"{key} eer"] = equal_error_rate(d, pairs.same)[0]
        row[f"{key} accuracy"] = accuracy_at_threshold(d, pairs.same, fv.threshold)
    row["difference"] = row["flip TTA roc_auc"] - row["plain roc_auc"]
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog=__doc__[__doc__.index("Time:"):])
    p.add_argument("data_dir", type=Path, help="LFW with pairsDevTest.txt and its people folders")
    p.add_argument("runs", nargs="+", help="finished face runs to score")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)

    from cnnlab.report import markdown_table
    from cnnlab.runtime import cpu_features

    name, features = cpu_features()
    print(f"CPU: {name}; vector extensions: {', '.join(features) or 'none'}; torch {torch.__version__}")
    rows = [score(run, args.data_dir) for run in args.runs]
    cols = ["run", "trained with flip TTA", "plain roc_auc", "flip TTA roc_auc", "difference", "plain eer",
            "flip TTA eer", "plain accuracy", "flip TTA accuracy"]
    print(markdown_table(cols, [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
                                for r in rows]))
    result = {"cpu": name, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
