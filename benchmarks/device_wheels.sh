#!/usr/bin/env bash
# Download the wheels a lent GPU machine lacks for benchmarks/device.sh into .whl/ (ignored by git; run here, in the
# repository root, where pip reaches the package registry). The GPU machine (/work/.library/device/KINDS.md) has
# Python 3.12 with torch, torchvision, numpy, scipy, scikit-learn, pandas, pyarrow, pyyaml, pillow and pytest, but
# not pydantic, which tuneclust's configs need; Ray and MLflow are not needed there (gpu.py skips its sweep-overhead
# row without Ray). Versions are the ones of requirements/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude; }
pin() { grep -i -E "^$1==" requirements/constraints.txt | head -n 1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "$(pin pydantic)" "$(pin pydantic_core)" "$(pin annotated-types)" "$(pin typing-inspection)"
ls -l .whl
