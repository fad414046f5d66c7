"""Turn the gate's results.jsonl into summary.md (tables) and summary.png (a chart).

    python bench/report.py OUT_DIR        # reads OUT_DIR/results.jsonl

summary.md: the correctness checks (error, tolerance, bit-identical backward), then per kernel one
table of timings: a row per (shape, dtype, mode), a column per implementation with
"ms (GB/s, peak MiB)", and the speed-up of each of ours over each peer; then the whole models
(torch.compile against eager, training throughput eager vs compiled); then every skipped or
failed case with its reason.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed run
                continue
    return rows


def _case_key(row) -> tuple:
    c = row["case"]
    return (str(c.get("shape", "")), str(c.get("dtype", "")), str(c.get("mode", "")))


def _fmt(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def checks_table(rows) -> list[str]:
    lines = [
        "## Correctness (float64 references)",
        "",
        "| kernel | impl | shape | dtype | mode | max rel err | tol | bit-identical bwd | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["phase"] != "check" or "skipped" in r or "error" in r or "ok" not in r:
            continue
        shape, dtype, mode = _case_key(r)
        lines.append(
            f"| {r['kernel']} | {r['impl']} | {shape} | {dtype} | {mode} | {_fmt(r.get('max_rel_err'))} "
            f"| {_fmt(r.get('tol'))} | {r.get('bitwise_repeat', '-')} | {'yes' if r['ok'] else '**NO**'} |"
        )
    return [*lines, ""]


def _kernel_timings(rows) -> list[dict]:
    """Timed rows of the kernels (the model phase has its own tables)."""
    return [r for r in rows if "ms" in r and r["phase"] not in ("check", "model")]


# The speed-ups printed: each of ours against the peers that do the same work (ours_full takes a
# delta computed outside its call, the fla pipeline builds it from dt_low; ours_tau3 runs tau = 3)
SAME_WORK = {"ours": ("spikingjelly", "torch_compile"), "ours_lowrank": ("fla_unfused",)}


def timing_tables(rows) -> list[str]:
    lines = []
    timed = _kernel_timings(rows)
    copy = [r["gbps"] for r in rows if r["kernel"] == "device" and "gbps" in r]
    if copy:
        lines += [f"Device copy bandwidth: {copy[0]:.4g} GB/s (read + write).", ""]
    for kernel in sorted({r["kernel"] for r in timed}):
        cases = defaultdict(dict)
        for r in timed:
            if r["kernel"] == kernel:
                cases[_case_key(r)][r["impl"]] = r
        impls = sorted({i for c in cases.values() for i in c}, key=lambda i: (not i.startswith("ours"), i))
        pairs = [(o, p) for o in impls for p in impls if p in SAME_WORK.get(o, ())]
        head = ["shape", "dtype", "mode"] + [f"{i} ms (GB/s, MiB)" for i in impls]
        head += [f"{o} vs {p}" for o, p in pairs]
        lines += [f"## {kernel}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in sorted(cases):
            c = cases[key]
            cells = list(key)
            for i in impls:
                r = c.get(i)
                cells.append(
                    f"{r['ms']:.4g} ({r['gbps']:.3g}, {_fmt(r.get('peak_mib'), '.0f')})" if r else "-"
                )
            for o, p in pairs:
                a, b = c.get(o), c.get(p)
                cells.append(f"{b['ms'] / a['ms']:.2f}x" if a and b and a["ms"] > 0 else "-")
            lines.append("| " + " | ".join(cells) + " |")
        compile_s = [
            (r["impl"], _case_key(r), r["compile_s"])
            for r in timed
            if r["kernel"] == kernel and "compile_s" in r
        ]
        if compile_s:
            lines += [
                "",
                "Compile time (excluded from the timings): "
                + ", ".join(f"{i} {' '.join(k)}: {s:.1f} s" for i, k, s in compile_s),
            ]
        lines.append("")
    return lines


def model_tables(rows) -> list[str]:
    """The model phase: torch.compile against eager, then training throughput eager vs compiled."""
    done = [r for r in rows if r["phase"] == "model" and "error" not in r and "skipped" not in r]
    if not done:
        return []
    lines = [
        "## Whole models: torch.compile(fullgraph=True) against eager",
        "",
        "| family | dtype | batches | compile s | logits rel err | grads rel err (worst) | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in done:
        if "logits_err" in r:
            shape, dtype, _ = _case_key(r)
            lines.append(
                f"| {shape} | {dtype} | {r.get('batches')} | {_fmt(r.get('compile_s'), '.1f')} "
                f"| {_fmt(r['logits_err'])} | {_fmt(r['grads_err'])} ({r.get('worst_grad')}) "
                f"| {'yes' if r.get('ok') else '**NO**'} |"
            )
    train = defaultdict(dict)
    for r in done:
        if "images_per_s" in r:
            train[_case_key(r)][r["impl"]] = r
    lines += [
        "",
        "| config | dtype | eager ms/step (img/s) | compiled ms/step (img/s) | compiled vs eager | compile s |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted(train):
        e, c = train[key].get("eager"), train[key].get("compiled")
        cells = [key[0], key[1]]
        cells += [f"{r['ms']:.4g} ({r['images_per_s']:.4g})" if r else "-" for r in (e, c)]
        cells.append(f"{e['ms'] / c['ms']:.2f}x" if e and c and c["ms"] > 0 else "-")
        cells.append(_fmt(c.get("compile_s") if c else None, ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def problems(rows) -> list[str]:
    lines = ["## Skipped and failed cases", ""]
    for r in rows:
        reason = r.get("error") or r.get("skipped")
        if reason or r.get("ok") is False:
            what = "FAILED" if "error" in r or r.get("ok") is False else "skipped"
            lines.append(
                f"- {what}: {r['kernel']} {r['impl']} {' '.join(_case_key(r))}: {reason or 'wrong result'}"
            )
    return [*lines, ""]


def markdown(rows) -> str:
    timing = sorted({r["timing"] for r in rows if r.get("timing")})
    how = {
        "back_to_back": "median of CUDA-event groups of back-to-back calls",
        "cpu_wall_smoke": "one call on the CPU under the interpreter, meaningless as a speed",
    }
    methods = "; ".join(f"{t} ({how.get(t, 'see bench/gate.py')})" for t in timing) or "-"
    head = ["# GPU gate summary", "", f"{len(rows)} rows; timing: {methods}.", ""]
    return "\n".join(head + checks_table(rows) + timing_tables(rows) + model_tables(rows) + problems(rows))


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = _kernel_timings(rows)
    kernels = sorted({r["kernel"] for r in timed})
    fig, axes = plt.subplots(max(1, len(kernels)), 1, figsize=(14, 4.5 * max(1, len(kernels))), squeeze=False)
    for ax, kernel in zip(axes[:, 0], kernels):
        sel = [r for r in timed if r["kernel"] == kernel]
        keys = sorted({_case_key(r) for r in sel})
        impls = sorted({r["impl"] for r in sel})
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            ms = {_case_key(r): r["ms"] for r in sel if r["impl"] == impl}
            ax.bar([x + j * width for x in range(len(keys))], [ms.get(k, 0) for k in keys], width, label=impl)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(keys))])
        ax.set_xticklabels([" ".join(k) for k in keys], rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms (median, log)")
        ax.set_title(kernel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    rows = load_rows(out / "results.jsonl")
    (out / "summary.md").write_text(markdown(rows))
    plot(rows, out / "summary.png")
    print(f"summary: {out / 'summary.md'} ({len(rows)} rows), {out / 'summary.png'}")


if __name__ == "__main__":
    main()
