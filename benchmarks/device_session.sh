#!/usr/bin/env bash
# One GPU session of a reproduction, on a machine that has PyTorch, pandas and matplotlib but not
# this project's other dependencies (no Jupyter): bench once per results folder, train the missing
# runs of the book until the time is up, and pack what was recorded so that the notebooks can be
# rendered elsewhere (`gradpath reproduce --scale mini --no-train`, then `make book`).
# Unpack here: `cat results-mini.tar.gz.* | tar -xz; cat weights-mini.tar.* | tar -x` (if any).
#
#   benchmarks/device_session.sh [SECONDS] [SCALE]      # defaults: 540 s, mini
#
# From the repository root. Reads CIFAR-10 from $GRADPATH_DATA (default .data/, holding
# cifar10-jpeg.tar.xz), installs the wheels in .whl/ (pycocotools, for detection) if there are any,
# and continues from what results/<scale>/ holds (carry it in). No run starts after the time limit
# (`reproduce --time-limit`); running ones finish, unless they would leave less than
# $GRADPATH_PACK_S (30 s) for packing: then they are stopped (the next session trains them again),
# so the command always ends with its records packed, inside the device's command limit. Writes
# ${OUT:-.}/results-<scale>.tar.gz.NN (15 MB parts: the records, tables and benches) and
# weights-<scale>.tar.NN (the final weights that runs still to come will need).
# Exits 0 when every run is recorded, 3 when time ran out first (run it again), else the failure.
set -uo pipefail
BUDGET_S=${1:-540}
SCALE=${2:-mini}
JOBS=${GRADPATH_JOBS:-auto}  # auto: what the jobs bench below found best on this GPU
LONGEST_RUN_S=${GRADPATH_LONGEST_RUN_S:-150}  # no run starts later than this before the end
PACK_S=${GRADPATH_PACK_S:-30}  # kept for packing: runs still going this close to the end are stopped
START=$(date +%s)
export GRADPATH_DATA=${GRADPATH_DATA:-.data} GRADPATH_CACHE=${GRADPATH_CACHE:-/tmp/gradpath-cache}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
GP="python3 -m gradpath_lib"
left() { echo $((BUDGET_S - LONGEST_RUN_S - ($(date +%s) - START))); }
within() { local s; s=$(left); [ "$s" -gt 0 ] || return 124; timeout "$s" "$@"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no NVIDIA GPU"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.is_available())"

# Benches first, once per results folder: they price every table (`gradpath bench reproduce`).
# resnet also compiled and with CUDA graphs: whether compiling pays at this scale (the book says).
for model in resnet csp-resnet prn elan; do
  variants=eager; [ "$model" = resnet ] && variants="eager compile cudagraphs"
  [ -e "results/$SCALE/bench/train-$model.json" ] \
    || within $GP bench train --model "$model" --scale "$SCALE" --steps 50 --variants $variants --save \
    || echo "bench $model: not done"
done
[ -e "results/$SCALE/bench/jobs-resnet.json" ] \
  || within $GP bench jobs --model resnet --scale "$SCALE" --jobs 1 2 4 8 --steps 100 --save || echo "bench jobs: not done"
$GP bench reproduce --scale "$SCALE" || true

# CIFAR-Det once per machine, in one process per core (a detection run would generate it in one).
compgen -G "$GRADPATH_CACHE/cifar-det/$SCALE-val-*.json" >/dev/null \
  || within $GP data build cifar-det --scale "$SCALE" || echo "cifar-det: not built"

# Then every run the book needs, $JOBS at a time (auto: as the jobs bench found best), none started in the last $LONGEST_RUN_S seconds.
STATUS=3  # the time ran out before any run could start
LIMIT=$(left)
HARD=$((BUDGET_S - PACK_S - ($(date +%s) - START)))
if [ "$LIMIT" -gt 0 ] && [ "$HARD" -gt 0 ]; then
  timeout "$HARD" $GP reproduce --scale "$SCALE" --runs-only --jobs "$JOBS" --time-limit "$LIMIT"
  STATUS=$?
  [ "$STATUS" = 124 ] && { echo "stopped the runs still going, $PACK_S s before the end"; STATUS=3; }
fi

# The records first, then the final weights that runs still to come need, smallest first, while
# everything stays under the device's 64 MiB that come back (a weight file left out is named: the
# run that needs it then stops with a clear error, and moving its target's record aside retrains it).
DEST=${OUT:-.}
tar -cz --exclude="results/$SCALE/weights" --exclude="results/$SCALE/checkpoints" "results/$SCALE" \
  | split -b 15M -d - "$DEST/results-$SCALE.tar.gz."
ROOM=$((60 * 1024 * 1024 - $(cat "$DEST/results-$SCALE.tar.gz."* | wc -c)))
NEEDED=$(python3 - "$SCALE" "$ROOM" <<'PY'
import sys
from gradpath_lib.runner import pending_weights
room = int(sys.argv[2])
for path in sorted((p for p in pending_weights(sys.argv[1]) if p.exists()), key=lambda p: p.stat().st_size):
    if path.stat().st_size <= room:
        room -= path.stat().st_size
        print(path)
    else:
        print(f"weights left out, no room to bring them back: {path}", file=sys.stderr)
PY
)
[ -n "$NEEDED" ] && tar -c $NEEDED | split -b 15M -d - "$DEST/weights-$SCALE.tar."
echo "packed $DEST/results-$SCALE.tar.gz.* and $(echo "$NEEDED" | grep -c .) weight files" \
  "($DEST/weights-$SCALE.tar.*) after $(($(date +%s) - START)) s; exit $STATUS"
exit "$STATUS"
