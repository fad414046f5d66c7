#!/usr/bin/env bash
# Run here (not on the GPU machine): download the pure-Python packages the GPU image lacks into
# .whl/ (ignored by git), to be copied with the tree to the GPU machine; bench/gpu_check.sh installs
# .whl/*.whl into a private folder first. Peers of the gate: spikingjelly 2.0 (needs loguru, tqdm),
# fla-core (flash-linear-attention's Triton kernels; needs einops). fvcore and its helpers serve
# the accounting tests. `pip wheel` builds the ones PyPI ships only as source.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip wheel -q --no-deps -w .whl \
    spikingjelly==2.0.0 loguru==0.7.3 fla-core==0.6.0 einops==0.8.2 tqdm \
    fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 portalocker tabulate termcolor
# PyYAML (the gate's model phase reads the training configs) has no pure-Python wheel: the
# GPU image's (CPython 3.12, x86-64 Linux); gpu_check.sh installs platform wheels one by one, so
# one that does not fit that machine costs only itself.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 -d .whl pyyaml==6.0.3
ls -la .whl
