#!/usr/bin/env bash
# One GPU session of the mini reproduction, on a machine that has PyTorch, pandas and matplotlib but
# not this project's other dependencies (no Jupyter): bench once per device, then train the missing
# runs of the book until the time is up, and pack what was recorded so the notebooks can be rendered
# elsewhere (`gradpath reproduce --scale mini --no-train`, `make book`).
#
#   benchmarks/device_session.sh [SECONDS] [SCALE]      # defaults: 540 s, mini
#
# From the repository root. Reads CIFAR-10 from $GRADPATH_DATA (default .data/, holding
# cifar10-jpeg.tar.xz), installs the wheels in .whl/ (pycocotools for detection) if there are any,
# continues from what results/<scale>/ already holds (records, benches and the checkpoints of
# unfinished runs: every run resumes from its last epoch), and writes
# ${OUT:-.}/results-<scale>.tar.gz (records, tables, benches, checkpoints; no final weights).
# Exits 0 when every run is recorded, 3 when time ran out first (run it again), else the failure.
set -uo pipefail
BUDGET_S=${1:-540}
SCALE=${2:-mini}
JOBS=${GRADPATH_JOBS:-4}
PACK_S=30  # kept back for packing the results
START=$(date +%s)
export GRADPATH_DATA=${GRADPATH_DATA:-.data} GRADPATH_CACHE=${GRADPATH_CACHE:-/tmp/gradpath-cache}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
GP="python3 -m gradpath_lib"
left() { echo $((BUDGET_S - PACK_S - ($(date +%s) - START))); }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no NVIDIA GPU"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

# Benches first, once per results folder: they price every table (`gradpath bench reproduce`).
for model in resnet csp-resnet prn elan; do
  [ -e "results/$SCALE/bench/train-$model.json" ] && continue
  timeout "$(left)" $GP bench train --model "$model" --scale "$SCALE" --save || echo "bench $model: failed"
done
[ -e "results/$SCALE/bench/jobs-resnet.json" ] \
  || timeout "$(left)" $GP bench jobs --model resnet --scale "$SCALE" --jobs 1 2 4 8 --save || echo "bench jobs: failed"
$GP bench reproduce --scale "$SCALE" || true

# Then every run the book needs, $JOBS at a time; a run cut off by the timeout resumes next session.
timeout "$(left)" $GP reproduce --scale "$SCALE" --runs-only --jobs "$JOBS"
STATUS=$?
[ "$STATUS" = 124 ] && STATUS=3

tar -czf "${OUT:-.}/results-$SCALE.tar.gz" --exclude="results/$SCALE/weights" "results/$SCALE"
echo "packed ${OUT:-.}/results-$SCALE.tar.gz after $(($(date +%s) - START)) s; exit $STATUS"
exit "$STATUS"
