#!/usr/bin/env bash
# The whole six-variant CIFAR-10 block study on one GPU, with its table.
#
#   bash benchmarks/gpu_study.sh DATA_DIR [STUDY_DIR] [extra cnnlab options...]
#
# DATA_DIR: complete CIFAR-10 (cifar-10-batches-py/ or train/ + test/ image folders);
# add --download to fetch the official archive into it. Target: each variant at
# least the original study's accuracy (A 85.77, B 87.93, D 86.21, D-sep 64.53,
# E 78.98 %), all six in 10 minutes or less on one H200 (the notebook took ~4.1 h).
#
# On a CUDA device cnnlab keeps the uint8 training set in GPU memory, augments
# there in batches, and --precision auto picks bf16 + channels_last on compute capability
# 8.0+ (fp16 with gradient scaling on a T4 or V100); this script
# adds torch.compile and a larger batch (learning rate scaled linearly from the
# defaults' 0.05 at batch 128).
#
# Time: 10 minutes or less on one H200 (the target above); on a machine without a CUDA GPU
# (2 CPU cores, say) it stops at once, before anything is written.
set -euo pipefail
data=${1:?usage: gpu_study.sh DATA_DIR [STUDY_DIR] [options]}
out=${2:-studies/gpu-$(date +%Y%m%d-%H%M%S)}
shift $(( $# >= 2 ? 2 : 1 ))

python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__)
PY

start=$(date +%s)
cnnlab cifar compare --blocks A,B,C,D,D-sep,E --data-dir "$data" --out "$out" \
  --device cuda --compile \
  --epochs 24 --batch-size 256 --lr 0.1 --gamma 0.83 --warmup-epochs 1 \
  --eval-batch-size 2000 --tsne-samples 2000 "$@"
end=$(date +%s)

python - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print(f"\n{'variant':<8}{'test acc %':>12}{'best val %':>12}{'train s':>10}{'wall s':>10}{'img/s':>10}")
for run in sorted((out / "runs").iterdir()):
    s = json.loads((run / "summary.json").read_text())
    print(f"{s['blocks']:<8}{100*s['test_accuracy']:>12.2f}{100*s['best_val_accuracy']:>12.2f}"
          f"{s['train_seconds']:>10.0f}{s['wall_seconds']:>10.0f}{s['train_images_per_second']:>10.0f}")
PY
echo "all six variants, training and evaluation: $(( end - start )) s; report: $out/report.html"
