#!/usr/bin/env bash
# Here, before a GPU session: put what benchmarks/device_session.sh reads into the git-ignored
# folders a device call carries: .data/ (the CIFAR-10 archive) and .whl/ (the pycocotools wheel for
# the device's Python, 3.12 by default, at the version constraints.txt pins).
#
#   benchmarks/prepare_device.sh [PYTHON_VERSION] [SCALE]   # defaults 3.12, mini; then carry
#                                                           # .data, .whl and results/<scale>
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${1:-3.12}
DATA=${GRADPATH_DATA:-../shared/data}
ARCHIVE=cifar10-jpeg.tar.xz
[ -f "$DATA/$ARCHIVE" ] || { echo "no $DATA/$ARCHIVE: set GRADPATH_DATA to the folder holding it" >&2; exit 2; }
VERSION=$(sed -n 's/^pycocotools==//p' constraints.txt)
[ -n "$VERSION" ] || { echo "constraints.txt pins no pycocotools version" >&2; exit 2; }
mkdir -p .data .whl
cp -u "$DATA/$ARCHIVE" .data/
rm -f .whl/pycocotools-*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "pycocotools==$VERSION"
SCALE=${2:-mini}
du -sh .data .whl "results/$SCALE" 2>/dev/null || true
TOTAL_KB=$(du -sk .data .whl "results/$SCALE" 2>/dev/null | awk '{s += $1} END {print s}')
echo "carry: .data .whl results/$SCALE (${TOTAL_KB} KiB; a device call takes at most 64 MiB with the working tree)"
[ "$TOTAL_KB" -lt $((56 * 1024)) ] || echo "warning: that is close to the limit; results/$SCALE/weights holds" \
  "weights no run still needs once their runs are recorded" >&2
