#!/usr/bin/env bash
# One prepared GPU session: correctness of the kernels on CUDA (fp32, bf16, fp16), the device's
# copy bandwidth, the kernel benchmarks, and a summary (markdown + JSON + PNG) under OUT_DIR.
#
#   bash bench/gpu_check.sh OUT_DIR            # e.g. bench/results/2026-11-28-h200
#
# Peers missing on the machine can travel as wheels in .whl/ (see /work/.library/device/README.md):
# they are installed into /tmp/site first. BENCH_K narrows the benchmark selection (pytest -k).
# Budget: about 8 minutes on an H200.
set -uo pipefail
OUT="${1:?usage: bash bench/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

{
    date -u +"date: %Y-%m-%dT%H:%MZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$OUT/environment.txt"

echo "== correctness on CUDA (kernel tests; fp32/bf16/fp16 cases included)"
timeout 240 python3 -m pytest tests/test_lif.py tests/test_ss2d.py -q -x -p no:cacheprovider \
    --junitxml="$OUT/kernel_tests.xml" 2>&1 | tail -15 | tee "$OUT/kernel_tests.txt"

echo "== device copy bandwidth"
COPY_GBPS=$(python3 - <<'EOF'
import torch
x = torch.empty(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(20):
    y.copy_(x)
end.record()
torch.cuda.synchronize()
seconds = start.elapsed_time(end) / 1e3 / 20
print(f"{2 * x.numel() * 4 / seconds / 1e9:.1f}")
EOF
)
echo "copy_GBps: $COPY_GBPS" | tee -a "$OUT/environment.txt"

echo "== benchmarks"
K_LIF="${BENCH_K:-16777216}"  # N = 2^24 (the targets), T = 4 and 8; BENCH_K="lif or ss2d" runs all
K_SS2D="${BENCH_K:-not n16 or ours}"
timeout 300 python3 -m pytest bench/bench_lif.py --benchmark-only -q -p no:cacheprovider -k "$K_LIF" \
    --benchmark-json="$OUT/bench_lif.json" --benchmark-columns=mean 2>&1 | tail -5
timeout 300 python3 -m pytest bench/bench_ss2d.py --benchmark-only -q -p no:cacheprovider -k "$K_SS2D" \
    --benchmark-json="$OUT/bench_ss2d.json" --benchmark-columns=mean 2>&1 | tail -5

python3 bench/report.py "$OUT" "$OUT"/bench_*.json --copy-gbps "$COPY_GBPS" >/dev/null && echo "summary: $OUT/summary.md"
