#!/usr/bin/env bash
# Run here (not on the GPU machine): download the pure-Python peers the GPU image lacks into
# .whl/ (ignored by git), so that a device run can carry them: run(carry=[".whl"], command=
# "bash bench/gpu_check.sh bench/results/<date>-h200"). gpu_check.sh installs .whl/*.whl first.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
# all pure Python: `pip wheel` builds the ones PyPI ships only as source (fvcore, iopath)
python3 -m pip wheel -q --no-deps -w .whl \
    spikingjelly==2.0.0 fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 portalocker tabulate termcolor
ls -la .whl
