"""Ablation ladder on digits: from the original SVMamba (svmamba_para133) to our svmamba.

Each rung changes one documented thing relative to the rung before it; every rung (and the
QKFormer and VMamba baselines) is trained with the same digits budget for each seed, then
profiled on the test split (360 images) with ``svm_models.accounting.profile``:

    python bench/ablation.py --out bench/results/<date>-ablation [--epochs N] [--seeds 0 1 2] [--only RUNG ...]

Seeds can run as parallel processes (``--seeds 0 1``, ``--seeds 2``, ... into one ``--out``); the
last one to finish writes the summary of all, and a repeated command skips the (rung, seed) pairs
already in its runs file. A folder holds runs of one length: a command that would train another
number of epochs into it is refused. Writes ``runs.csv`` (one row per rung and seed), ``summary.csv`` and
``summary.md`` (mean and std over the seeds) and ``pareto.png`` (test top-1 vs energy per image)
into ``--out``.
Top-1 is the last epoch's (digits has no validation split, so no checkpoint is picked on test).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch

from svm_models import accounting
from svm_models.layers import set_backend
from svm_models.training import engine
from svm_models.training.config import load_config, validate


@dataclass
class Rung:
    name: str
    change: str  # what this rung changes relative to the one before it
    config: str
    model_args: dict = field(default_factory=dict)


PARA133 = "configs/digits_svmamba_para133.yaml"
SPIKING_OUTSIDE_MIXER = {"stem": "spiking", "ffn": "spiking", "norm": "bn"}
LADDER = [
    Rung("para133", "the original SVMamba (real stem/FFN, LN, spike mask on a real scan path)", PARA133),
    Rung("+spiking stem", "stem and downsampling: Conv-BN-LIF instead of Conv-LN-GELU", PARA133, {"stem": "spiking"}),
    Rung(
        "+spiking FFN",
        "FFN: LIF-Conv1x1-BN-LIF-Conv1x1-BN instead of Conv1x1-SiLU-Conv1x1",
        PARA133,
        {"stem": "spiking", "ffn": "spiking"},
    ),
    Rung("+BN for LN", "pre-norms: BatchNorm instead of LayerNorm", PARA133, SPIKING_OUTSIDE_MIXER),
    Rung(
        "+binary scan input",
        "scan input: s = LIF(Linear(x)) through a depthwise Conv3x3-BN-LIF, so the scan reads spikes, "
        "instead of the dense Conv3x3-SiLU and SS2D's Linear-DWConv3x3-SiLU",
        PARA133,
        {**SPIKING_OUTSIDE_MIXER, "scan_input": "spike"},
    ),
    Rung(
        "+spike gate",
        "gate: out = out_proj(LIF(LN(y)) * g), g = LIF of more in_proj channels, instead of the spike "
        "mask LIF(out_proj(LN(y))) on the real x",
        PARA133,
        {**SPIKING_OUTSIDE_MIXER, "scan_input": "spike", "gate": "conv"},
    ),
    Rung(
        "+BN-LIF after the scan",
        "mixer norms: BN instead of LN after the scan; in_proj and out_proj Conv1x1-BN instead of Linear",
        PARA133,
        {**SPIKING_OUTSIDE_MIXER, "scan_input": "spike", "gate": "conv", "mixer_norm": "bn"},
    ),
    Rung(
        "svmamba",
        "block: membrane shortcut x + Mixer(LIF(x)) without pre-norms (and a LIF before the head)",
        "configs/digits_svmamba.yaml",
    ),
]  # fmt: skip
BASELINES = [
    Rung("qkformer", "baseline: spiking transformer", "configs/digits_qkformer.yaml"),
    Rung("vmamba", "baseline: non-spiking VMamba", "configs/digits_vmamba.yaml"),
]

CONV_LINEAR_OPS = ("conv", "linear")


def spike_input_share(report) -> tuple[int, int]:
    """(Conv/Linear layers whose input is spikes or spike counts, all Conv/Linear layers)."""
    rows = [r for r in report.rows if r.op in CONV_LINEAR_OPS]
    return sum(r.kind in ("spike", "integer") for r in rows), len(rows)


def rung_config(rung: Rung, seed: int = 0, epochs: int | None = None, out_dir: str = "runs") -> dict:
    """The training config of one rung and seed: its file with the rung's model arguments."""
    raw = dict(load_config(rung.config))
    raw["model_args"] = {**raw["model_args"], **rung.model_args}
    raw.update(seed=seed, output_dir=out_dir, task_name=f"{rung.name.strip('+').replace(' ', '_')}_s{seed}")
    if epochs is not None:
        raw["epochs"] = epochs
        # (warmup must end before the last epoch: the digits configs warm up for 1)
        raw["warmup_epochs"] = min(raw.get("warmup_epochs", 0), epochs - 1)
    return validate(raw, rung.config)


def run_one(rung: Rung, seed: int, epochs: int | None, out_dir: str) -> dict:
    cfg = rung_config(rung, seed, epochs, out_dir)
    start = time.perf_counter()
    result = engine.fit(cfg, progress=False)
    train_s = time.perf_counter() - start
    model = engine.build_model(cfg, 10)
    model.load_state_dict(
        torch.load(os.path.join(out_dir, cfg["task_name"], "last.pt"), weights_only=False)["model"]
    )
    set_backend(model, "torch").eval()
    test = engine.build_split(cfg, "test", augment=False)
    loader = torch.utils.data.DataLoader(test, batch_size=120)
    report = accounting.profile(model, loader, name=cfg["model"])
    spiking, layers = spike_input_share(report)
    return {
        "rung": rung.name,
        "seed": seed,
        "epochs": cfg["epochs"],
        "top1_last": result["history"][-1]["val_top1"],
        "top1_profile": report.top1,
        "params": report.params,
        "spike_input_layers": spiking,
        "conv_linear_layers": layers,
        "macs_M": report.macs / 1e6,
        "mac_ops_M": report.mac_ops / 1e6,
        "sops_M": report.sops / 1e6,
        "energy_uJ": report.energy_mj * 1e3,
        "mean_rate": report.mean_firing_rate,
        "train_s": round(train_s, 1),
    }


def summarise(rows: list[dict], rungs: list[Rung]) -> list[dict]:
    out = []
    for rung in rungs:
        rs = [r for r in rows if r["rung"] == rung.name]
        if not rs:
            continue
        acc = [r["top1_last"] for r in rs]
        energy = [r["energy_uJ"] for r in rs]
        out.append(
            {
                "rung": rung.name,
                "change": rung.change,
                "seeds": len(rs),
                "top1_mean": statistics.mean(acc),
                "top1_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "spike_input_layers": f"{rs[0]['spike_input_layers']}/{rs[0]['conv_linear_layers']}",
                "params": rs[0]["params"],
                "macs_M": statistics.mean(r["macs_M"] for r in rs),
                "sops_M": statistics.mean(r["sops_M"] for r in rs),
                "energy_uJ_mean": statistics.mean(energy),
                "energy_uJ_std": statistics.stdev(energy) if len(energy) > 1 else 0.0,
            }
        )
    return out


def read_runs(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                for k in ("top1_last", "macs_M", "sops_M", "energy_uJ"):
                    r[k] = float(r[k])
                for k in ("seed", "params", "spike_input_layers", "conv_linear_layers"):
                    r[k] = int(r[k])
                rows.append(r)
    return rows


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def markdown(summary: list[dict]) -> str:
    lines = [
        "| rung | change | top-1 (%) | spike-input Conv/Linear | params | MACs/img | SOPs/img | energy/img |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        # (one seed has no spread to show: no "± 0.00")
        top1_std, energy_std = (
            (f" ± {s['top1_std']:.2f}", f" ± {s['energy_uJ_std']:.2f}") if s["seeds"] > 1 else ("", "")
        )
        lines.append(
            f"| {s['rung']} | {s['change']} | {s['top1_mean']:.2f}{top1_std} | "
            f"{s['spike_input_layers']} | {s['params']:,} | {s['macs_M']:.2f} M | {s['sops_M']:.2f} M | "
            f"{s['energy_uJ_mean']:.2f}{energy_std} uJ |"
        )
    return "\n".join(lines) + "\n"


def plot(path: str, summary: list[dict]) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    ladder_names = [r.name for r in LADDER]
    ladder = sorted(
        (s for s in summary if s["rung"] in ladder_names), key=lambda s: ladder_names.index(s["rung"])
    )
    ax.plot(
        [s["energy_uJ_mean"] for s in ladder], [s["top1_mean"] for s in ladder], "-", color="0.75", zorder=1
    )
    for s in summary:
        step = ladder_names.index(s["rung"]) if s["rung"] in ladder_names else None
        label = s["rung"] if step is None else f"{step}. {s['rung']}"
        ax.errorbar(
            s["energy_uJ_mean"],
            s["top1_mean"],
            xerr=s["energy_uJ_std"],
            yerr=s["top1_std"],
            fmt="o" if step is not None else "s",
            capsize=3,
            zorder=2,
            label=label,
        )
        # Rungs sit close together: the plot names them by step number, the legend in full.
        tag = s["rung"] if step is None else str(step)
        ax.annotate(tag, (s["energy_uJ_mean"], s["top1_mean"]), textcoords="offset points", xytext=(5, 4))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([2, 3, 5, 10, 20])
    ax.set_xlabel("energy per image (uJ, 45 nm fp32; log scale)")
    ax.set_ylabel("digits test top-1 (%), mean ± std over seeds")
    ax.set_title(f"SVMamba ablation ladder on digits (grey: rungs 0 -> {len(ladder_names) - 1})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_epochs(p: argparse.ArgumentParser, out: str, rows: list[dict], rungs: list[Rung], epochs) -> None:
    """Refuse to mix training lengths in one results folder: its summary averages every run in
    it, and a repeated command would take another length's runs for done."""
    planned = {r.name: rung_config(r, epochs=epochs, out_dir=out)["epochs"] for r in rungs}
    lengths = {int(r["epochs"]) for r in rows} | set(planned.values())
    if len(lengths) > 1:
        p.error(
            f"{out} would hold runs of {' and '.join(map(str, sorted(lengths)))} epochs; "
            "one length per results folder: use another --out"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument(
        "--epochs", type=int, default=None, help="override every config's epochs (all rungs alike)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", default=None, help="rung names to run (default: all)")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.makedirs(args.out, exist_ok=True)
    # Both ends of the ladder and the baselines first: on a busy machine they are what a partial
    # run must have.
    order = [LADDER[0], LADDER[-1], *BASELINES, *LADDER[1:-1]]
    unknown = set(args.only or ()) - {r.name for r in order}
    if unknown:
        p.error(
            f"--only: no rung named {', '.join(sorted(unknown))}; the rungs: {', '.join(r.name for r in order)}"
        )
    rungs = [r for r in order if args.only is None or r.name in args.only]
    # One runs file per seed list, so that seeds can run in parallel processes into one folder;
    # finished (rung, seed) pairs are skipped when the command is repeated.
    runs_path = os.path.join(args.out, f"runs_seed{'_'.join(map(str, args.seeds))}.csv")
    rows = read_runs([runs_path])
    check_epochs(
        p, args.out, read_runs(glob.glob(os.path.join(args.out, "runs_seed*.csv"))), rungs, args.epochs
    )
    done = {(r["rung"], r["seed"]) for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for rung in rungs:
            for seed in args.seeds:
                if (rung.name, seed) in done:
                    continue
                row = run_one(rung, seed, args.epochs, tmp)
                print(
                    f"{rung.name} seed {seed}: top-1 {row['top1_last']:.2f}%, {row['energy_uJ']:.2f} uJ",
                    flush=True,
                )
                rows.append(row)
                write_csv(runs_path, rows)
    all_runs = read_runs(sorted(glob.glob(os.path.join(args.out, "runs_seed*.csv"))))
    write_csv(os.path.join(args.out, "runs.csv"), all_runs)
    summary = summarise(all_runs, LADDER + BASELINES)
    write_csv(os.path.join(args.out, "summary.csv"), summary)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(markdown(summary))
    plot(os.path.join(args.out, "pareto.png"), summary)
    print(markdown(summary))


if __name__ == "__main__":
    main()
