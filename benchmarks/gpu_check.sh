#!/usr/bin/env bash
# The GPU check, as one script a fresh CUDA machine runs as it is, from the repository root or anywhere:
#
#     bash benchmarks/gpu_check.sh            # writes gpu-check/ (override with OUT=folder)
#
# 1. an environment: a virtualenv that reuses the machine's own CUDA build of torch when it has one (no
#    download then), with vared installed in it (its dependencies from the package index when reachable);
# 2. speed: benchmarks/bench_speed.py on CUDA in bf16, eager, at batch 1, 8 and 32, for r3d_18 and x3d_m, at block
#    stage and conv granularity (original ms, adaptive ms, time ratio, FLOPs ratio, realised share), as a table and JSON;
# 3. training: `vared finetune` on CUDA with --amp bf16 for a few steps, on the synthetic dataset, from an r3d_18
#    with random weights converted by `vared convert`;
# 4. a time budget: `vared profile --latency-table` on CUDA, then `vared finetune --cost latency` for a few steps.
# Everything it prints is also written under $OUT; the last line says where. Nothing here needs a GPU-specific
# edit: device, dtype and batch sizes are the script's own.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-check}"
PYTHON="${PYTHON:-python3}"
STEPS="${STEPS:-20}"
mkdir -p "$OUT"
cd "$ROOT"
exec > >(tee "$OUT/log.txt") 2>&1

echo "== machine"
nvidia-smi || echo "nvidia-smi not found"

echo "== environment"
if [ ! -x "$ROOT/.venv-gpu/bin/python" ]; then
    "$PYTHON" -m venv --system-site-packages "$ROOT/.venv-gpu"
fi
# shellcheck disable=SC1091
. "$ROOT/.venv-gpu/bin/activate"
if ! python -c "import torch, torchvision" 2>/dev/null; then
    pip install -q torch torchvision
fi
# vared and its dependencies (fvcore, pytorchvideo, onnx, PyAV, ...); offline, whatever is already installed serves
pip install -q -e ".[pytorchvideo]" || pip install -q --no-deps -e .
python - <<'EOF' | tee "$OUT/env.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch " + torch.__version__
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0),
      "bf16", torch.cuda.is_bf16_supported())
EOF

echo "== speed: CUDA bf16, eager, batch 1/8/32, r3d_18 and x3d_m, block, stage and conv granularity"
python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --backends eager --models r3d_18,x3d_m \
    --batches 1,8,32 --granularity block,stage,conv --repeats 10 --malloc system | tee "$OUT/speed.txt"
python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --backends eager --models r3d_18 \
    --batches 1 --granularity block --repeats 3 --quick --json > "$OUT/speed_quick.json"

echo "== finetune: CUDA, --amp bf16, $STEPS steps"
DATA="$OUT/data"
[ -d "$DATA/train" ] || python examples/make_synthetic_dataset.py "$DATA" --train-per-class 8 --val-per-class 4 \
    --size 128
python - "$OUT/r3d18_random.pth" <<'EOF'
import sys, torch, torchvision
torch.manual_seed(0)
torch.save(torchvision.models.video.r3d_18(num_classes=8).state_dict(), sys.argv[1])
EOF
for granularity in block stage conv; do
    vared convert "$OUT/r3d18_random.pth" --arch torchvision:r3d_18 --num-classes 8 --input-shape 3,8,112,112 \
        --granularity "$granularity" --out "$OUT/r3d18_${granularity}.pth" --force
    vared finetune "$OUT/r3d18_${granularity}.pth" --data "$DATA" --device cuda --amp bf16 --epochs 1 \
        --max-steps "$STEPS" --batch-size 8 --frames 8 --stride 2 --size 112 --workers 4 --log-every 5 \
        --run-dir "$OUT/run_${granularity}" --out "$OUT/r3d18_${granularity}_ft.pth"
    vared profile "$OUT/r3d18_${granularity}_ft.pth" --option 2,0.5 --latency --device cuda \
        --json "$OUT/profile_${granularity}.json" || echo "profile on cuda failed (see above)"
done

echo "== latency table on CUDA, and a finetune budgeted in time on it"
vared profile "$OUT/r3d18_block.pth" --latency-table "$OUT/latency_cuda.json" --device cuda --repeats 10 --force
vared finetune "$OUT/r3d18_block.pth" --data "$DATA" --device cuda --amp bf16 --epochs 1 --max-steps "$STEPS" \
    --batch-size 8 --frames 8 --stride 2 --size 112 --workers 4 --log-every 5 --cost latency \
    --latency-table "$OUT/latency_cuda.json" --target-flops 0.8 --run-dir "$OUT/run_latency" \
    --out "$OUT/r3d18_latency_ft.pth" --force

echo "== done: figures in $OUT (speed.txt, log.txt, run_*/metrics.jsonl)"
