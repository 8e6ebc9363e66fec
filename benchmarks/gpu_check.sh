#!/usr/bin/env bash
# The checks for the first GPU this project gets: at most 8 minutes on one H100 (80 GB).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default benchmarks/results/gpu_check-<date>
#
# 1. environment: GPU name, memory, torch / CUDA / flash-attn versions            (20 s box)
# 2. attention: every backend in fp16 and bf16 at the paper's sequence lengths, forward and gradients, against an
#    fp32 reference, flex's gradients against sdpa's (benchmarks/check_attention.py)   (70 s box)
# 2b. gradient accumulation fusion: the fused weight-gradient GEMMs (fp16/bf16 into fp32) against autograd and an
#    fp32 run, and their time (benchmarks/check_grad_fusion.py)                    (25 s box)
# 3. the 300M and the 1B stage-2 step as recommended for an 80 GB card (compiled blocks, no recompute, the paper's
#    micro batch and accumulation, the config's fp16): step time, MFU, peak memory (bench_train_step.py)
#                                                                                   (165 s and 185 s boxes)
# 4. the roofline estimate of the same steps, to set beside the measurements (CPU; skipped when time is short:
#    python benchmarks/roofline.py gives the same numbers on any machine)           (30 s box)
# Each part writes its own JSON and log under OUT_DIR and runs in its own time box; a part that fails or runs out
# of time is recorded as such and the next one still runs. benchmarks/gpu_check_summary.py merges what there is
# into OUT_DIR/gpu_check.json at the end (and after every part, so a kill keeps the parts done).
#
# CI runs the same script on a CPU at toy sizes: GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 (tests/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu_check-$(date +%Y%m%d-%H%M%S)}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TINY=${GPU_CHECK_TINY:-0}
PY=${PYTHON:-python}
mkdir -p "$OUT"
START=$(date +%s)

part() {  # part NAME SECONDS COMMAND...: run in a time box, record rc, seconds, timeout
  local name=$1 box=$2
  shift 2
  local t0=$(date +%s)
  echo "== $name (at most ${box} s): $*"
  timeout --signal=TERM --kill-after=10 "$box" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local timed_out=false
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then timed_out=true; fi
  printf '{"part": "%s", "rc": %d, "seconds": %d, "timed_out": %s, "box_s": %d}\n' \
    "$name" "$rc" "$(( $(date +%s) - t0 ))" "$timed_out" "$box" > "$OUT/$name.status.json"
  tail -n 4 "$OUT/$name.log"
  "$PY" benchmarks/gpu_check_summary.py "$OUT" > /dev/null 2>&1 || true
}

if [ "$TINY" = 1 ]; then
  STAGE2_300M=configs/demo/stage2_joint_tiny.py; STAGE2_1B=configs/demo/stage2_joint_tiny.py
  STEPS="--steps 1 --warmup 1"; ATTN_TINY=--tiny; MICRO="--batch 2 --accum 1"; COMPILE=False  # CI: no inductor
else
  STAGE2_300M=configs/joint_train/lr6e-04_tmp004_300m.py; STAGE2_1B=configs/joint_train/lr6e-04_tmp004_1b.py
  STEPS="--steps 6 --warmup 2"; ATTN_TINY=; MICRO=; COMPILE=True
fi

part environment 20 "$PY" -c "
import json, shutil, subprocess, torch
info = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'device': '$DEVICE'}
if '$DEVICE' == 'cuda':
    p = torch.cuda.get_device_properties(0)
    info.update(name=torch.cuda.get_device_name(0), memory_gib=p.total_memory / 2**30, capability=list(torch.cuda.get_device_capability(0)), sms=p.multi_processor_count)
    if shutil.which('nvidia-smi'):
        info['nvidia_smi'] = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,clocks.max.sm,driver_version', '--format=csv,noheader'], capture_output=True, text=True).stdout.strip()
try:
    import flash_attn; info['flash_attn'] = flash_attn.__version__
except ImportError as exc:
    info['flash_attn'] = None
from internlm.monitor.gpus import gpu_by_device_name
spec = gpu_by_device_name(info.get('name', ''))
info['spec'] = spec.key if spec else None
json.dump(info, open('$OUT/environment.json', 'w'), indent=1)
print(info)
"
part attention 70 "$PY" benchmarks/check_attention.py --device "$DEVICE" $ATTN_TINY --json "$OUT/attention.json"
part grad_fusion 25 "$PY" benchmarks/check_grad_fusion.py --device "$DEVICE" $ATTN_TINY --json "$OUT/grad_fusion.json"
# 80 GB recommendation (benchmarks/RESULTS.md, README): compiled blocks, no recompute; the config's micro batch;
# gradient accumulation fusion on by default (CUDA, fp16)
part step_300m 165 "$PY" benchmarks/bench_train_step.py --config "$STAGE2_300M" --checkpoint 0 \
  --opt model.compile=$COMPILE --device "$DEVICE" $STEPS $MICRO --json "$OUT/step_300m.json"
part step_1b 185 "$PY" benchmarks/bench_train_step.py --config "$STAGE2_1B" --checkpoint 0 \
  --opt model.compile=$COMPILE --device "$DEVICE" $STEPS $MICRO --json "$OUT/step_1b.json"
LEFT=$(( 470 - ($(date +%s) - START) ))  # the estimates only in what is left of 8 minutes
if [ "$LEFT" -gt 25 ]; then
  part estimates $(( LEFT < 30 ? LEFT : 30 )) "$PY" benchmarks/gpu_check_summary.py "$OUT" --estimate
fi
"$PY" benchmarks/gpu_check_summary.py "$OUT"
echo "gpu_check: $(( $(date +%s) - START )) s, results in $OUT/gpu_check.json"
