#!/usr/bin/env bash
# Everything a first GPU session should measure, in one command of at most 9 minutes wall time.
#
#   bash benchmarks/gpu_check.sh [--dry-run] CIFAR_TAR LFW_TAR OUT_DIR
#
# CIFAR_TAR, LFW_TAR: cifar10.tar.xz and lfw-view1.tar.xz from benchmarks/pack_data.py (the GPU machine
# has no network; both travel with the working tree, 64 MiB at most). They are unpacked into a scratch
# folder ($SCRATCH, default a new temporary folder). OUT_DIR gets, as each part ends, its log
# (<part>.log), its tables and summary.json files, and one line "<part> <exit status> <seconds>" in
# status.txt (124: the part ran out of time). A part that fails or times out leaves the parts before
# it untouched and the script goes on with the next one.
#
# Parts and their time (540 s in all; a part that ends early leaves its time to the ones after it, each
# part taking at most three times its own):
#   info     15 s  nvidia-smi, torch, CUDA and cuDNN versions, CPU count
#   unpack   30 s  both archives (~60 MB of xz)
#   tests    60 s  python -m pytest -q -m cuda --durations=10 tests/cuda (their --durations lines
#                  measure the cost of torch.compile and of cuDNN autotuning, for the next budget)
#   cifar   290 s  the six variants A,B,C,D,D-sep,E at full width on the complete CIFAR-10: batch 256,
#                  lr 0.1 as in gpu_study.sh, but CIFAR_EPOCHS=10 epochs (gamma 0.65, so the last
#                  learning rate is ~1% of the first, as 0.83 over 24 epochs), t-SNE of 500 test
#                  images only (0 would mean all 10,000, minutes of CPU per variant). Estimate: ~1.4
#                  GMAC per image forward (the table's MACs column), ~0.4 PFLOP per training epoch
#                  of 45,000 images (forward and backward); at a third of the
#                  H200's bf16 peak that is ~1 s an epoch, and the eager kernels of these small 32x32
#                  layers are several times slower: ~3-4 s an epoch, ~40 s a variant with its
#                  evaluation. No --compile (COMPILE=1 adds it): inductor compiles a training step in
#                  tens of seconds per network, so six compiles would take most of this part before
#                  one epoch is measured; the tests part compiles one step, and the full 24-epoch
#                  study (benchmarks/gpu_study.sh) is where compiling pays.
#   faces   100 s  LFW View 1 training, EfficientNet-Lite0 at 112 px, the default contrastive recipe
#                  (6 epochs, StepLR 3), on the packed images, which are cropped already: --crop 1.0
#   view2    30 s  cnnlab faces evaluate on pairs.txt (View 2, 10 folds)
#   tables   15 s  tables.md: both studies' figures, from the summary.json files
#
# --dry-run: the same parts on the CPU, tiny: width 0.125, one epoch, 300 training images, 20
# validation images a class, t-SNE of 200, no CUDA-only flags (the CUDA tests run and skip
# themselves). It checks the whole script except CUDA in a few minutes.
#
# Time: at most 9 minutes on a GPU (each part under `timeout`, the whole within 540 s and a few
# seconds to stop a part that overran); --dry-run about 3 minutes on 2 cores.
# Environment: PYTHON (default python), SCRATCH, CIFAR_EPOCHS, COMPILE=1.
set -uo pipefail

dry=0
if [[ "${1:-}" == "--dry-run" ]]; then dry=1; shift; fi
if [[ $# -ne 3 ]]; then
  echo "usage: gpu_check.sh [--dry-run] CIFAR_TAR LFW_TAR OUT_DIR" >&2; exit 2
fi
cifar_tar=$1; lfw_tar=$2; out=$3
for f in "$cifar_tar" "$lfw_tar"; do
  [[ -f "$f" ]] || { echo "gpu_check.sh: $f is not a file (expected a tar.xz from benchmarks/pack_data.py)" >&2; exit 2; }
done
if [[ -e "$out/status.txt" ]]; then
  echo "gpu_check.sh: $out already holds a check (status.txt); give a new OUT_DIR" >&2; exit 2
fi
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
py=${PYTHON:-python}
scratch=${SCRATCH:-$(mktemp -d)}
mkdir -p "$scratch"
export CNNLAB_CACHE_DIR=$scratch/cache

start=$(date +%s)
deadline=$(( start + 540 ))
# part NAME BUDGET_S RESERVED_AFTER_S COMMAND...: runs COMMAND with the time left less what the
# later parts need, logs it to OUT_DIR/NAME.log (and the console), records its exit status.
part() {
  local name=$1 budget=$2 after=$3; shift 3
  local t0 limit rc
  t0=$(date +%s)
  limit=$(( deadline - t0 - after ))
  (( limit > budget * 3 )) && limit=$(( budget * 3 ))
  (( limit < 5 )) && limit=5
  echo "== $name (up to ${limit} s) =="
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$out/status.txt"
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s =="
  return 0
}

if (( dry )); then
  device=cpu
  cifar_opts=(--width 0.125 --epochs 1 --max-train-samples 300 --val-per-class 20 --batch-size 64 --lr 0.05
              --eval-batch-size 500 --tsne-samples 200)
  faces_opts=(--epochs 1 --batch-size 32)
else
  device=cuda
  cifar_opts=(--epochs "${CIFAR_EPOCHS:-10}" --batch-size 256 --lr 0.1 --gamma 0.65 --warmup-epochs 1
              --eval-batch-size 2000 --tsne-samples 500)
  [[ "${COMPILE:-0}" == 1 ]] && cifar_opts+=(--compile)
  faces_opts=(--epochs 6 --step-size 3)
fi

info() {
  nvidia-smi || echo "nvidia-smi: not available"
  "$py" - <<'PY'
import os, torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
      "| CPUs", os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("GPU:", p.name, f"| compute capability {p.major}.{p.minor} | {p.total_memory / 2**30:.0f} GiB")
else:
    print("GPU: none visible to torch")
PY
}

unpack() {
  tar -xJf "$cifar_tar" -C "$scratch" && tar -xJf "$lfw_tar" -C "$scratch" && du -sh "$scratch"/cifar10 "$scratch"/lfw
}

tables() {
  "$py" - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
lines = []
def load(p):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
runs = sorted((out / "cifar" / "runs").glob("*/summary.json")) if (out / "cifar" / "runs").is_dir() else []
lines += ["| variant | test acc % | best val % | train s | wall s | img/s |", "|---|---|---|---|---|---|"]
for p in runs:
    s = load(p)
    if s is None or "test_accuracy" not in s:
        lines.append(f"| {p.parent.name} | unfinished | | | | |")
        continue
    lines.append(f"| {s['blocks']} | {100 * s['test_accuracy']:.2f} | {100 * s['best_val_accuracy']:.2f} | "
                 f"{s['train_seconds']:.0f} | {s['wall_seconds']:.0f} | {s['train_images_per_second']:.0f} |")
f = load(out / "faces" / "contrastive" / "summary.json") or {}
lines += ["", "| faces (LFW View 1) | value |", "|---|---|"]
for k in ("roc_auc", "eer", "accuracy", "lfw_accuracy_mean", "lfw_accuracy_std", "train_seconds",
          "train_images_per_second"):
    v = f.get(k)
    lines.append(f"| {k} | {v:.4f} |" if isinstance(v, (int, float)) else f"| {k} | missing |")
(out / "tables.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
}

export py out scratch cifar_tar lfw_tar
export -f info unpack tables  # so that timeout can run them, through bash
part info 15 525 bash -c info
part unpack 30 495 bash -c unpack
part tests 60 435 "$py" -m pytest -q -m cuda --durations=10 tests/cuda
part cifar 290 145 "$py" -m cnnlab cifar compare --blocks A,B,C,D,D-sep,E --data-dir "$scratch/cifar10" \
  --out "$out/cifar" --device "$device" "${cifar_opts[@]}"
part faces 100 45 "$py" -m cnnlab faces train --data-dir "$scratch/lfw" --protocol lfw-view1 --crop 1.0 \
  --image-size 112 --backbone efficientnet_lite0 --device "$device" "${faces_opts[@]}" --out "$out/faces/contrastive"
part view2 30 15 "$py" -m cnnlab faces evaluate "$out/faces/contrastive" --pairs "$scratch/lfw/pairs.txt" --device "$device"
part tables 15 0 bash -c tables

echo "status (part, exit status, seconds):"
cat "$out/status.txt"
echo "all parts: $(( $(date +%s) - start )) s; outputs in $out"
