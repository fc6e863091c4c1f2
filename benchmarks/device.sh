#!/usr/bin/env bash
# Everything issue 10 needs measured on a GPU, as one call of the device tool (a lent H100/H200; 15 minutes of
# device time per task, so this is sized to finish in about 10):
#
#   here:    bash benchmarks/device_wheels.sh                      # pydantic & co. for the GPU machine, into .whl/
#   device:  run(command="bash benchmarks/device.sh", carry=[".whl"], timeout_s=600)
#
# 1. installs the carried wheels (pip --target, no index), 2. runs benchmarks/gpu.py --device cuda --record
# (reference, each method in each runtime, packing with and without MPS, start-up; the sweep-overhead row is
# skipped there without Ray), 3. runs the CUDA-only tests (CUDA graphs equal eager: the runtime's small net and
# every method through the trial loop; k-means on the GPU). Logs and the updated benchmarks/RESULTS_LOG.md are written to $OUT (the device tool
# brings them back); copy its new sections into benchmarks/RESULTS_LOG.md (and update the current table in RESULTS.md).
#
# The fast path's quality is a second call (another ~10 minutes, so a later session's or a larger budget):
#   device:  run(command="bash benchmarks/device.sh quality", carry=[".whl"], timeout_s=600)
# trains IDFD, DCCS M1, CDC AE*+L_DC and ICS full on the digits, 3 seeds, with the GPU defaults (bf16,
# channels_last, CUDA graphs), in fp32 eager and in fp32 eager on inputs nudged one ulp, and records fast - eager
# per arm against the seed spread and the rounding spread (benchmarks/fidelity.py --vs-eager).
# `bash benchmarks/device.sh steps` (a third call) records benchmarks/step_graph.py: each method's step eager, with
# only its nets compiled, and with its whole pure part (augmentation, nets, loss) in CUDA graphs.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "device.sh: installing .whl/ failed (run benchmarks/device_wheels.sh here and carry .whl)"; exit 2; }
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
# gpu.py first: it prints each row as it is measured, so a cut-off run still leaves its rows in gpu.log
if [ "${1:-}" = steps ]; then  # each method eager / nets compiled / whole step in CUDA graphs (~5 min)
  timeout 540 python3 benchmarks/step_graph.py --device cuda --record 2>&1 | tee "$OUT/step_graph.log"
  cp benchmarks/RESULTS_LOG.md "$OUT/RESULTS_LOG.md"
  exit 0
fi
if [ "${1:-}" = quality ]; then
  t0=$(date +%s)
  timeout 540 python3 benchmarks/fidelity.py --device cuda --vs-eager --arms IDFD M1 AEs_LDC full --seeds 3 \
    --workers 4 --record 2>&1 | tee "$OUT/quality.log"
  echo "fidelity --vs-eager: $(( $(date +%s) - t0 )) s (exit ${PIPESTATUS[0]})"
  cp benchmarks/RESULTS_LOG.md "$OUT/RESULTS_LOG.md"
  exit 0
fi
t0=$(date +%s)
timeout 420 python3 benchmarks/gpu.py --device cuda --record 2>&1 | tee "$OUT/gpu.log"
echo "gpu.py: $(( $(date +%s) - t0 )) s (exit ${PIPESTATUS[0]})"
cp benchmarks/RESULTS_LOG.md "$OUT/RESULTS_LOG.md"
t0=$(date +%s)
timeout 180 python3 -m pytest -q -p no:cacheprovider -m "slow or not slow" tests/test_runtime.py tests/test_kmeans.py 2>&1 | tee "$OUT/tests.log" | tail -n 30
echo "tests: $(( $(date +%s) - t0 )) s"
