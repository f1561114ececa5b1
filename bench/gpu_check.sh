#!/usr/bin/env bash
# One prepared GPU check: every GPU figure the project claims, in one run (target < 8 min on one GPU).
#
#   bench/gpu_check.sh [--quick] [--out DIR]
#
# With a CUDA device it measures
#   1. each Table 8 model's training step at batch 8 and 32, fp32 vs bf16 autocast, contiguous vs
#      channels_last_3d (clips/s, synchronised, warm)              -> e3d bench models --device cuda
#   2. deployment runtimes: eager CPU/CUDA (bf16, channels_last_3d), ONNX Runtime CPU/CUDA provider
#                                                                   -> e3d bench models --runtime ...
#   3. `e3d train --gpu --workers 1` through Ray Train with NCCL for a few hundred steps on synthetic
#      Jester data, then `e3d eval --gpu` on the best checkpoint
#   4. the loader's clips/s on this host against the GPU's training-step rate (how many loader processes
#      one GPU needs)                                                -> bench/bench_loader.py --gpu-rate
# Without one it runs the CPU parts at a tiny scale and prints, for each GPU part, "SKIPPED (no GPU)".
# --quick: the smallest scale everywhere (what the test suite runs, so this script cannot rot).
# Environment: PY (python of the project's environment; default .venv/bin/python, else python3).
set -euo pipefail

QUICK=0
OUT=/tmp/e3d-gpu-check
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
E3D=("$PY" -m pipeline)
mkdir -p "$OUT"
START=$(date +%s)
SKIPPED=()
GPU=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
section() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - START ))"; }
skip() { echo "SKIPPED (no GPU): $1"; SKIPPED+=("$1"); }

if [[ $GPU == 1 ]]; then
  "$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0))'
else
  echo "no CUDA device: running the CPU parts only (tiny scale); GPU parts are listed as SKIPPED"
fi

# -- 1. training step per model ------------------------------------------------------------------------------
section "1. training step per model"
if [[ $GPU == 1 ]]; then
  for B in 8 32; do
    "${E3D[@]}" bench models --device cuda --models table8 --modes train --batch-size "$B" \
      --layouts contiguous,channels_last_3d --precisions fp32,bf16 --warmup 5 --iters 20 \
      --json "$OUT/train_step_b$B.json" | tee "$OUT/train_step_b$B.txt"
  done
else
  skip "training step of every Table 8 model at batch 8/32, bf16 vs fp32, channels_last_3d vs contiguous"
  "${E3D[@]}" bench models --device cpu --models shufflenetv2_0.25x --modes train --batch-size 2 --frames 8 \
    --size 32 --warmup 1 --iters 2 --json "$OUT/train_step_cpu.json" | tee "$OUT/train_step_cpu.txt"
fi

# -- 2. deployment runtimes ----------------------------------------------------------------------------------
section "2. deployment runtimes"
if [[ $GPU == 1 ]]; then
  "${E3D[@]}" bench models --runtime eager,onnxruntime,cuda,onnxruntime_cuda --models table8 --batch 1,8 \
    --threads "$(nproc)" --warmup 3 --iters 10 --markdown --json "$OUT/runtime.json" | tee "$OUT/runtime.md"
else
  skip "CUDA eager (bf16, channels_last_3d) and ONNX Runtime CUDA provider latency (rows say 'not measured')"
  "${E3D[@]}" bench models --runtime eager,onnxruntime,cuda,onnxruntime_cuda --models shufflenetv2_0.25x \
    --batch 1 --threads 1 --frames 8 --size 32 --warmup 1 --iters 2 --markdown --json "$OUT/runtime.json" \
    | tee "$OUT/runtime.md"
fi

# -- 3. Ray Train (NCCL) + evaluation --------------------------------------------------------------------------
section "3. synthetic data, Ray Train, evaluation"
if [[ $QUICK == 1 || $GPU == 0 ]]; then
  CLASSES=3; PER_CLASS=4; SHORT=32; TRAIN_ARGS=(--epochs 1 --max-steps-per-epoch 2 --lr 0.01 --batch-size 4 --clip-len 8
    --size 32 --loader-workers 0 --model shufflenetv2_0.25x)
else
  # 4 classes x 60 videos, batch 32: 8 steps per epoch; 40 epochs = 320 steps
  CLASSES=4; PER_CLASS=60; SHORT=64; TRAIN_ARGS=(--epochs 40 --batch-size 32 --clip-len 16 --size 56
    --loader-workers 4 --model shufflenetv2_1.0x)
fi
DATA="$OUT/data"
if [[ ! -f "$DATA/.synth-done" ]]; then
  rm -rf "$DATA"
  "${E3D[@]}" synth jester --out "$DATA" --classes "$CLASSES" --per-class "$PER_CLASS" --no-bad --seed 3
  touch "$DATA/.synth-done"
fi
"${E3D[@]}" preprocess jester --src "$DATA" --out "$OUT/shards" --splits train,validation --short-side "$SHORT" \
  --no-progress --num-cpus 2
rm -rf "$OUT/run" "$OUT/eval"
GPU_FLAG=()
if [[ $GPU == 1 ]]; then
  GPU_FLAG=(--gpu)
else
  skip "e3d train --gpu --workers 1 (Ray Train, NCCL) and e3d eval --gpu: ran on CPU (gloo) instead"
fi
"${E3D[@]}" train --dataset jester --shards "$OUT/shards" --out "$OUT/run" --workers 1 --num-cpus 2 \
  "${TRAIN_ARGS[@]}" "${GPU_FLAG[@]}" | tee "$OUT/train.txt"
# `e3d train`'s summary names "... -- best checkpoint PATH" (pipeline/logs.train_summary)
CKPT=$(sed -n 's/.* -- best checkpoint \(.*\)$/\1/p' "$OUT/train.txt" | tail -1)
[[ -f $CKPT ]] || { echo "gpu_check.sh: no best checkpoint in the train output" >&2; exit 1; }
"${E3D[@]}" eval --checkpoint "$CKPT" --shards "$OUT/shards" --out "$OUT/eval" "${GPU_FLAG[@]}" | tee "$OUT/eval.txt"

# -- 4. loader vs GPU ---------------------------------------------------------------------------------------
section "4. loader clips/s vs the GPU's step rate"
if [[ $GPU == 1 ]]; then
  RATE=$("$PY" - "$OUT/train_step_b32.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["results"]
best = [r for r in rows if r["model"] == "shufflenetv2_1.0x" and r["precision"] == "bf16" and r["clips_per_s"]]
print(max(r["clips_per_s"] for r in best))
EOF
)
  echo "GPU training rate (ShuffleNetV2 1.0x, batch 32, bf16, best layout): $RATE clips/s"
  "$PY" bench/bench_loader.py --reps 3 --clips 160 --videos 24 --workers "$(nproc)" --gpu-rate "$RATE" \
    | tee "$OUT/loader.txt"
elif [[ $QUICK == 1 ]]; then
  skip "loader processes per GPU (needs the GPU's step rate); bench/bench_loader.py not run in --quick"
else
  skip "loader processes per GPU (needs the GPU's step rate); loader measured against the default 2000 clips/s"
  "$PY" bench/bench_loader.py --reps 1 --clips 32 --videos 8 --workers 2 | tee "$OUT/loader.txt"
fi

section "done"
echo "outputs in $OUT"
if [[ ${#SKIPPED[@]} -gt 0 ]]; then
  echo "SKIPPED ${#SKIPPED[@]} GPU part(s) (no CUDA device):"
  for s in "${SKIPPED[@]}"; do echo "  - $s"; done
else
  echo "every GPU part measured"
fi
