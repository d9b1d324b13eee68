#!/usr/bin/env bash
# Face verification on LFW View 1 with EfficientNet-Lite0 on the CPU: every run of the measured report.
#
#   bash benchmarks/faces_view1.sh DATA_DIR [OUT_DIR] [extra cnnlab options for every run...]
#
# DATA_DIR: LFW deep-funneled with its protocol files, e.g. after
#   cnnlab faces download --data-dir data/lfw
# (people folders in DATA_DIR/lfw-deepfunneled/ or DATA_DIR/images_deepfunneled/; peopleDevTrain.txt,
# peopleDevTest.txt, pairsDevTest.txt and pairs.txt in DATA_DIR).
#
# Runs (test = the 1,000 pairs of pairsDevTest.txt; all at 112 px, in the precision --precision auto
# picks: bf16 on the CPU the README's table was measured on, which has AVX512-BF16). Faces are found as
# --align says: auto (the default) detects and aligns each face to the five-point template; pass
# --align center for the centre crop of the deep-funneled images (the README's first table):
#   imagenet      --epochs 0: ImageNet Lite0 + a random head; backbone_* = the ImageNet features alone
#   contrastive   the default recipe, 6 epochs (StepLR 3 + 3), then analyze and View 2 (pairs.txt)
#   triplet       batch-hard triplet loss, margin 0.2, 8 epochs (StepLR 6 + 2), then analyze and View 2
#   abl-*         the ablations, shorter: contrastive margin 1 and margin 2 for 1 epoch, triplet for
#                 2 epochs (a triplet epoch shows each image once, a contrastive epoch twice: the
#                 same number of images)
#   cosface       CosFace (margin 0.35, scale 30), BN-neck head, flip TTA, 8 epochs (StepLR 6 + 2)
#   arcface       ArcFace (margin 0.5, scale 30), the same otherwise
#   subcenter     sub-center ArcFace (3 weights per person), the same otherwise
#   triplet-bnneck  the triplet run with --head bnneck --flip-tta
#   lite1, lite2  triplet-bnneck on the deeper EfficientNet-Lite1 and Lite2 (still 112 px; their weights are
#                 the extras cnnlab[lite1] and cnnlab[lite2])
#   unfreeze      triplet-bnneck with the head alone for its first epoch (--freeze-epochs 1)
#   triplet-160   triplet-bnneck at --image-size 160: the best row (View 1 0.962, View 2 0.932)
#   compare       all of them side by side (compare/report.html)
# With DIAGNOSTICS=1 also three 1-epoch runs behind the defaults' docstring (cnnlab.faces.train):
# backbone at the head's learning rate, BatchNorm in train mode, and the original notebook's settings.
#
# On a machine other jobs share, torch's default of one thread per core can be several times slower
# than one thread (threads wait for each other at every layer); the measured report ran each job
# with OMP_NUM_THREADS=1, two jobs side by side on a 2-core CPU.
#
# Time: about 4 to 5 hours on 2 idle cores with AVX512-BF16 (the contrastive run alone took 16
# minutes, each 8-epoch run at 112 px 15 to 20 minutes, Lite1 and Lite2 about 1.3x that, the 160 px run
# about 2x; --align auto detects every face once, about 10 minutes, cached afterwards); about
# 1.4x that on a CPU that trains in fp32, and more on a machine other jobs share. Every run has a
# fixed number of epochs, so nothing grows past that; the script can be stopped at any time and run
# again with the same OUT_DIR: finished runs are kept, an unfinished one resumes.
set -euo pipefail
data=${1:?usage: faces_view1.sh DATA_DIR [OUT_DIR] [options]}
out=${2:-studies/faces-view1-$(date +%Y%m%d-%H%M%S)}
shift $(( $# >= 2 ? 2 : 1 ))
common=(--data-dir "$data" --protocol lfw-view1 --backbone efficientnet_lite0 --image-size 112 "$@")

echo "load before the runs: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
run() {  # NAME OPTIONS...: a finished run is kept, an unfinished one resumed
  local name=$1; shift
  if [[ -f "$out/$name/config.yaml" ]]; then
    cnnlab faces train --resume "$out/$name"
  else
    cnnlab faces train "${common[@]}" "$@" --out "$out/$name"
  fi
}

run imagenet --epochs 0
run contrastive --epochs 6 --step-size 3
run triplet --loss triplet --miner batch-hard --margin 0.2 --epochs 8 --step-size 6
run abl-margin1 --epochs 1 --margin 1.0
run abl-margin2 --epochs 1 --margin 2.0
run abl-triplet --epochs 2 --loss triplet --miner batch-hard --margin 0.2
run cosface --loss cosface --head bnneck --flip-tta --epochs 8 --step-size 6
run arcface --loss arcface --head bnneck --flip-tta --epochs 8 --step-size 6
run subcenter --loss subcenter-arcface --head bnneck --flip-tta --epochs 8 --step-size 6
tb=(--loss triplet --miner batch-hard --margin 0.2 --head bnneck --flip-tta --epochs 8 --step-size 6)
run triplet-bnneck "${tb[@]}"
run lite1 "${tb[@]}" --backbone efficientnet_lite1
run lite2 "${tb[@]}" --backbone efficientnet_lite2
run unfreeze "${tb[@]}" --freeze-epochs 1
run triplet-160 "${tb[@]}" --image-size 160
if [[ "${DIAGNOSTICS:-0}" == 1 ]]; then
  run x-backbone-lr --epochs 1 --backbone-lr-mult 1.0
  run x-bn-train --epochs 1 --no-freeze-bn
  run x-notebook --epochs 1 --no-normalize-embeddings --backbone-lr-mult 1.0 --no-freeze-bn
fi

view2=(contrastive triplet cosface arcface subcenter triplet-bnneck lite1 lite2 unfreeze triplet-160)
all=(imagenet abl-margin1 abl-margin2 abl-triplet "${view2[@]}")
for r in "${all[@]}"; do
  cnnlab faces analyze "$out/$r" --log-far
done
for r in "${view2[@]}"; do
  cnnlab faces evaluate "$out/$r" --pairs "$data/pairs.txt"
done
cnnlab faces compare "${all[@]/#/$out/}" --out "$out/compare"
echo "load after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

python - "$out" "${view2[@]}" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
cols = ("roc_auc", "eer", "accuracy", "backbone_roc_auc", "precision_at_1", "train_seconds")
print(f"\n{'run':<16}" + "".join(f"{c:>18}" for c in cols) + f"{'img/s':>8}")
for run in sorted(p for p in out.iterdir() if (p / "summary.json").is_file()):
    s = json.loads((run / "summary.json").read_text())
    ips = s.get("train_images_per_second") or 0
    print(f"{run.name:<16}" + "".join(f"{s.get(c) if s.get(c) is not None else float('nan'):>18.4f}" for c in cols)
          + f"{ips:>8.1f}")
for name in sys.argv[2:]:
    s = json.loads((out / name / "summary.json").read_text())
    print(f"{name}: View 2 (pairs.txt, 10 folds) {s['lfw_accuracy_mean']:.4f} ± {s['lfw_accuracy_std']:.4f}"
          f" ({s['lfw_pairs_with_training_people']} of {s['lfw_num_pairs']} pairs hold a training person)")
PY
