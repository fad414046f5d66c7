"""Turn pytest-benchmark JSON files into a markdown table and a PNG chart.

    python bench/report.py OUT_DIR results1.json [results2.json ...] [--copy-gbps X]

Writes OUT_DIR/summary.md and OUT_DIR/summary.png: one row per benchmark case (the test id
without the provider), one column per provider with mean time in ms, achieved GB/s, and the
speed-up of "ours" over each peer.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path


def load_cases(paths):
    """{(test, case): {provider: extra_info + mean}} from pytest-benchmark JSON files."""
    cases = defaultdict(dict)
    for path in paths:
        for bench in json.loads(Path(path).read_text())["benchmarks"]:
            m = re.match(r"(\w+)\[([^-\]]+)-(.*)\]", bench["name"])
            if not m:
                continue
            test, provider, case = m.groups()
            cases[(test, case)][provider] = dict(
                bench.get("extra_info", {}), mean_ms=bench["stats"]["mean"] * 1e3
            )
    return cases


def markdown(cases, copy_gbps=None) -> str:
    lines = []
    for test in sorted({t for t, _ in cases}):
        rows = {case: provs for (t, case), provs in cases.items() if t == test}
        providers = sorted(
            {p for provs in rows.values() for p in provs}, key=lambda p: (p.startswith("ours"), p)
        )
        ours = [p for p in providers if p.startswith("ours")]
        head = (
            ["case"]
            + [f"{p} ms (GB/s)" for p in providers]
            + [f"{o} speed-up vs {p}" for o in ours for p in providers if not p.startswith("ours")]
        )
        if copy_gbps:
            head += [f"{o} % of copy BW" for o in ours]
        lines += [f"### {test}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for case in sorted(rows):
            provs = rows[case]
            cells = [case]
            for p in providers:
                r = provs.get(p)
                cells.append(f"{r['mean_ms']:.3f} ({r.get('GB/s', 0):.0f})" if r else "-")
            for o in ours:
                for p in providers:
                    if p.startswith("ours"):
                        continue
                    a, b = provs.get(o), provs.get(p)
                    cells.append(f"{b['mean_ms'] / a['mean_ms']:.2f}x" if a and b else "-")
            if copy_gbps:
                for o in ours:
                    r = provs.get(o)
                    cells.append(f"{100 * r['GB/s'] / copy_gbps:.0f}%" if r and "GB/s" in r else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(cases, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = sorted({t for t, _ in cases})
    fig, axes = plt.subplots(len(tests), 1, figsize=(14, 4.5 * len(tests)), squeeze=False)
    for ax, test in zip(axes[:, 0], tests):
        rows = sorted(case for t, case in cases if t == test)
        providers = sorted({p for (t, _), provs in cases.items() if t == test for p in provs})
        width = 0.8 / max(1, len(providers))
        for i, p in enumerate(providers):
            ys = [cases[(test, c)].get(p, {}).get("mean_ms", 0) for c in rows]
            ax.bar([x + i * width for x in range(len(rows))], ys, width, label=p)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
        ax.set_xticklabels(rows, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("mean time (ms, log)")
        ax.set_title(test)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("jsons", nargs="+")
    parser.add_argument("--copy-gbps", type=float, help="measured device copy bandwidth, for the % column")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = load_cases(args.jsons)
    (out / "summary.md").write_text(markdown(cases, args.copy_gbps))
    plot(cases, out / "summary.png")
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
