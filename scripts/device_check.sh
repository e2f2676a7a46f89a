#!/usr/bin/env bash
# The paper-preset pretext benchmark on a CUDA machine, end to end from JPEG files
# (updetr_lite/device_check.py): ~3000 photo-like 500x375 JPEGs, then pre-training steps with
# the 'device' and the 'worker' patch pipelines (bf16 autocast, fused AdamW, pinned memory,
# loader workers), torch.compile of the transformer, a torchrun 2-process run where there are
# 2+ GPUs. Prints images/s, the share of time spent waiting for data, peak memory. Under 8
# minutes on one H100/H200.
#
#   bash scripts/device_check.sh                 # CUDA, full size
#   bash scripts/device_check.sh --tiny --device cpu --images 16 ...   # the CPU test
#
# Needs a Python with torch, torchvision and scipy (PYTHON=... to choose one). Extra
# arguments go to the Python module; results also land in $OUT/device_check.json if OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || command -v python )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
log=$(mktemp)
status=0
timeout "${DEVICE_CHECK_TIMEOUT:-470}" "$PY" -m updetr_lite.device_check --torchrun "$@" | tee "$log" \
  || status=$?
echo "device_check: $(( $(date +%s) - start )) s, exit status $status"
if [ -n "${OUT:-}" ]; then
  grep '^RESULT ' "$log" | sed 's/^RESULT //' > "$OUT/device_check.json" || true
fi
rm -f "$log"
exit "$status"
