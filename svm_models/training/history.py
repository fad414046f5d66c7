"""Per-epoch log: a CSV with one row per epoch and a PNG of the loss and accuracy curves.

Both are regenerated from the history stored in the checkpoint, so after a resume they hold
exactly the epochs the checkpoint has seen.
"""

from __future__ import annotations

import csv
import io

from .checkpoint import atomic_write_binary, atomic_write_text

COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_top5",
    "epoch_time_s",
    "images_per_s",
]


def write_csv(history: list[dict[str, float]], path: str) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(buf.getvalue(), path)


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(history: list[dict[str, float]], path: str, title: str = "") -> None:
    """Loss (train/val) and accuracy (train/val top-1, val top-5) against the epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    validated = [r for r in history if "val_loss" in r]  # every eval_every epochs
    val_ep = [r["epoch"] for r in validated]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    a.plot(val_ep, [r["val_loss"] for r in validated], "s-", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_title("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [r["train_acc"] for r in history], "o-", label="train top-1")
    b.plot(val_ep, [r["val_top1"] for r in validated], "s-", label="val top-1")
    b.plot(val_ep, [r["val_top5"] for r in validated], "^--", label="val top-5", alpha=0.6)
    (
        b.set_xlabel("epoch"),
        b.set_ylabel("accuracy (%)"),
        b.set_title("accuracy"),
        b.legend(),
        b.grid(alpha=0.3),
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write_binary(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
