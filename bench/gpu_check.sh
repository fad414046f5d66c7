#!/usr/bin/env bash
# The GPU gate in one call: correctness at real shapes, our kernels, the peers; every figure in
# files directly under OUT (at most 8), written as the run goes, so a run cut short keeps them:
#
#   OUT/results.jsonl    one JSON row per case, appended and flushed (bench/gate.py)
#   OUT/environment.txt  date, GPU, driver, torch / triton / peer versions
#   OUT/gate.log         everything the run printed
#   OUT/summary.md       tables made from results.jsonl (bench/report.py)
#   OUT/summary.png      the timings as a chart
#
#   bash bench/gpu_check.sh OUT                      # on the GPU machine: at most ~9 minutes
#   SVM_BENCH_SMOKE=1 bash bench/gpu_check.sh OUT    # on a CPU: interpreter, tiny shapes, <= 3 min
#
# Peers the GPU image lacks travel as wheels in .whl/ (bash bench/fetch_wheels.sh); they are
# installed into a private target folder first. GATE_BUDGET_S bounds the kernel phases' case loops
# (290 s on a GPU, 80 s in smoke mode), GATE_MODEL_S the model phase's (200 s, 60 s): with the
# installs, the processes' start-ups and the report, under the 10 minutes one command may take.
# Whatever the budgets, no phase runs past GATE_DEADLINE_S (545 s) after the start, so the
# report always gets its time. Within a phase the cases run by priority (bench/gate.py), so a
# phase cut short loses the least needed rows.
# GATE_PHASES overrides the per-phase processes ("all": one process; e.g. "model" alone).
set -uo pipefail
OUT="${1:?usage: bash bench/gpu_check.sh OUT}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SMOKE="${SVM_BENCH_SMOKE:-0}"
if [ "$SMOKE" = 1 ]; then
    export TRITON_INTERPRET=1
    BUDGET="${GATE_BUDGET_S:-80}"
    MODEL_BUDGET="${GATE_MODEL_S:-60}"
else
    BUDGET="${GATE_BUDGET_S:-290}"
    MODEL_BUDGET="${GATE_MODEL_S:-200}"
fi
DEADLINE="${GATE_DEADLINE_S:-545}"  # seconds after the start (bash's SECONDS) for the last phase
LOG="$OUT/gate.log"
: >"$LOG"
log() { echo "$@" | tee -a "$LOG"; }

if [ "$SMOKE" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    SITE="$(mktemp -d)/site"
    PIP=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE")
    # pure-Python wheels in one call; platform wheels one by one (a misfit costs only itself)
    if compgen -G ".whl/*-none-any.whl" >/dev/null; then
        timeout 60 "${PIP[@]}" .whl/*-none-any.whl >>"$LOG" 2>&1
    fi
    for WHEEL in .whl/*.whl; do
        case "$WHEEL" in *-none-any.whl) continue ;; esac
        timeout 30 "${PIP[@]}" "$WHEEL" >>"$LOG" 2>&1 || echo "not installed: $WHEEL" >>"$LOG"
    done
    export PYTHONPATH="$SITE:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    echo "smoke: $SMOKE"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
    timeout 60 python3 - <<'EOF'
import importlib.metadata as md
import platform
print("python", platform.python_version())
for name in ("torch", "triton", "spikingjelly", "fla-core", "loguru", "numpy", "torchvision", "PyYAML"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
EOF
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt" >>"$LOG"

log "== gate: checks, models, ours, peers (kernel budget ${BUDGET} s, models ${MODEL_BUDGET} s)"
# On a GPU each phase runs in its own process (a lost CUDA context costs one phase, not the
# run); the checks and ours get at most three eighths of the kernel budget each (the checks: 28
# cases, each shape's kernels compiled; ours: its stage-1 rows compile the most), the peers what
# is left of it (~74 s; the first GPU run's peers took 66 s); the model phase (compiles:
# minutes) has its own budget and runs second. Each phase's share is also cut to what the
# deadline leaves (less the outer limit's 30 s); the outer limits leave the report its time
# even if a case hangs inside a C call.
KERNEL_USED=0
GATE_RC=0
if [ "$SMOKE" = 1 ]; then
    PHASES="${GATE_PHASES:-all}"
else
    PHASES="${GATE_PHASES:-check model ours peer}"
fi
for PHASE in $PHASES; do
    LEFT=$((BUDGET - KERNEL_USED))
    case "$PHASE" in
        model) SHARE=$MODEL_BUDGET ;;
        peer) SHARE=$LEFT ;;
        all) SHARE=$((LEFT + MODEL_BUDGET)) ;;
        *) SHARE=$((BUDGET * 3 / 8 < LEFT ? BUDGET * 3 / 8 : LEFT)) ;;
    esac
    UNTIL_DEADLINE=$((DEADLINE - SECONDS - 30))
    if [ "$SHARE" -gt "$UNTIL_DEADLINE" ]; then
        SHARE=$UNTIL_DEADLINE
        log "gate phase $PHASE: cut to ${SHARE} s by the deadline (${DEADLINE} s after the start)"
    fi
    OUTER=$((SHARE + 30))
    if [ "$SHARE" -lt 10 ]; then
        # no time left: every case written as skipped, with the reason, in seconds (an outer
        # limit of SHARE + 30 here would run past the deadline and cost the report)
        SHARE=0
        OUTER=20
    fi
    ARGS=("$OUT" --budget-s "$SHARE")
    [ "$PHASE" != all ] && ARGS+=(--phase "$PHASE")
    STARTED=$SECONDS
    timeout -k 10 "$OUTER" python3 bench/gate.py "${ARGS[@]}" 2>&1 | tee -a "$LOG"
    RC=${PIPESTATUS[0]}
    [ "$PHASE" != model ] && KERNEL_USED=$((KERNEL_USED + SECONDS - STARTED))
    log "gate phase $PHASE exit status: $RC"
    [ "$RC" != 0 ] && GATE_RC=$RC
done

log "== report"
timeout 45 python3 bench/report.py "$OUT" 2>&1 | tail -n 3 | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
exit "$GATE_RC"
