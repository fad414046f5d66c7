"""``python -m svm_models.accounting --model vmamba_t --img-size 224``: params, MACs, SOPs, energy.

The model is freshly built (random weights) and fed random N(0, 1) images. That is all an ANN
needs (its energy is E_MAC x MACs). For a spiking model the firing rates, hence SOPs and energy,
come from those random weights and inputs, and the output says so; ``--calibrate-bn N`` first
sets the BatchNorm statistics from N random batches, so that the layers see normalised inputs
as in a trained network (the weights stay random). ``--preset hw_45nm_fp32`` (or another
hardware preset) adds the hardware energy model; ``--first-layer once`` costs the image conv once.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..base import MIN_IMG_SIZE
from .energy import ALIASES, PRESETS
from .hardware import REUSE
from .profiler import FIRST_LAYER, PAPER, profile
from .profiler import PRESETS as MODEL_PRESETS


def _parse_override(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m svm_models.accounting",
        description="Params, MACs (fvcore, 1 MAC = 1 FLOP), SOPs and energy per image of a registered model, "
        "on random input with random weights.",
    )
    p.add_argument("--model", help="registered model name (see --list)")
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument(
        "--num-classes", type=int, default=None, help="classifier outputs (default: the model's own)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_parse_override,
        metavar="KEY=VALUE",
        help="constructor override, e.g. --set T=2 --set backend=torch (repeatable)",
    )
    p.add_argument(
        "--batch", type=int, default=1, help="random images in the firing-rate pass (spiking models)"
    )
    p.add_argument(
        "--calibrate-bn",
        type=int,
        default=0,
        metavar="N",
        help="set BatchNorm statistics from N random batches first (spiking models)",
    )
    p.add_argument("--energy", default="45nm_fp32", choices=sorted(set(PRESETS) | set(ALIASES)))
    p.add_argument(
        "--preset",
        default=PAPER,
        choices=MODEL_PRESETS,
        help="energy model: 'paper' (the papers' convention, default) or a hardware model (adds memory "
        "traffic, neuron updates and addressing per layer)",
    )
    p.add_argument(
        "--reuse",
        default=None,
        choices=REUSE,
        help="hardware model: weight reuse of the MAC layers (default none)",
    )
    first = p.add_mutually_exclusive_group()  # (--first-layer per_step --first-layer-once: which?)
    first.add_argument(
        "--first-layer",
        choices=FIRST_LAYER,
        default=None,
        help="the image conv runs at every step (per_step, default) or once",
    )
    first.add_argument("--first-layer-once", action="store_true", help="same as --first-layer once")
    p.add_argument("--count-batchnorm", action="store_true", help="count BatchNorm ops (default: folded, 0)")
    p.add_argument("--integer-as", choices=("ac", "mac"), default="ac")
    p.add_argument("--head-as", choices=("mac", "auto"), default="mac")
    p.add_argument("--markdown", action="store_true", help="print the full Markdown report (stages)")
    p.add_argument("--layers", action="store_true", help="with --markdown, include the per-layer table")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--png", metavar="PATH", help="write the energy-per-stage bar chart")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


class UsageError(Exception):
    """A bad argument: shown as one ``error:`` line, exit status 2 (the scripts' convention)."""


def check_args(args: argparse.Namespace) -> None:
    """Range checks argparse cannot express, and the model name."""
    import svm_models

    if not args.model:
        raise UsageError("--model is required (see --list)")
    if args.model not in svm_models.list_models():
        raise UsageError(f"unknown model {args.model!r}; registered: {', '.join(svm_models.list_models())}")
    for flag, value, low in (
        ("--batch", args.batch, 1),
        ("--img-size", args.img_size, MIN_IMG_SIZE),
        ("--num-classes", args.num_classes, 1),
        ("--calibrate-bn", args.calibrate_bn, 0),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise UsageError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available")
    # options that would otherwise be ignored without a word
    if args.reuse is not None and args.preset == PAPER:
        raise UsageError("--reuse applies to a hardware model: add --preset hw_45nm_fp32 (or another)")
    if args.layers and not args.markdown:
        raise UsageError("--layers extends the --markdown report: add --markdown")
    if args.png and not args.png.lower().endswith(".png"):
        raise UsageError(f"--png writes a PNG image: name it *.png, got {args.png}")
    for flag, path in (("--json", args.json), ("--png", args.png)):
        # checked before the profile, which can take minutes, not after it
        folder = os.path.dirname(path or "") or "."
        if path and not os.path.isdir(folder):
            raise UsageError(f"{flag} {path}: no folder {folder}")


def build_model(args: argparse.Namespace):
    """The registered model with the overrides; a bad override or size is a UsageError."""
    import svm_models

    kwargs = dict(args.overrides)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    try:
        return svm_models.create_model(args.model, img_size=args.img_size, **kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot build {args.model} with these settings: {e}") from None


def main(argv: list[str] | None = None) -> int:
    import svm_models

    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(svm_models.list_models()))
        return 0
    try:
        check_args(args)
        torch.manual_seed(args.seed)
        model = build_model(args).to(args.device)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = args.img_size or model.img_size
    if size is None:
        print("error: the model has no default img_size; pass --img-size", file=sys.stderr)
        return 2
    spiking = bool(model.spiking)
    report = profile(
        model,
        None,  # random images from --seed; BatchNorm statistics from --calibrate-bn random batches
        img_size=size,
        random_batch=args.batch,
        seed=args.seed,
        calibrate_bn=args.calibrate_bn,
        name=args.model,
        energy=args.energy,
        preset=args.preset,
        first_layer="once" if args.first_layer_once else (args.first_layer or "per_step"),
        count_batchnorm=args.count_batchnorm,
        integer_as=args.integer_as,
        head_as=args.head_as,
        reuse=args.reuse or "none",
    )
    em = report.energy_model
    print(
        f"{args.model} at {size} px, {model.num_classes} classes"
        + (f", T = {report.T}" if spiking else " (ANN)")
    )
    print(f"  params           {report.params:,}")
    print(
        f"  MACs             {report.macs / 1e9:.9f} G per image (fvcore, 1 MAC = 1 FLOP"
        + (", all time steps)" if spiking else ")")
    )
    if spiking:
        print(f"  MACs per step    {report.macs / report.T / 1e9:.9f} G")
        print(f"  costed as MAC    {report.mac_ops / 1e9:.6f} G")
        print(f"  SOPs             {report.sops / 1e9:.6f} G")
        rate = "-" if report.mean_firing_rate is None else f"{report.mean_firing_rate:.4f}"
        print(f"  mean firing rate {rate}")
        print(f"  neuron updates   {report.neuron_updates / 1e9:.6f} G")
    print(
        f"  energy           {report.energy_mj:.4f} mJ per image "
        f"(E_MAC {em.e_mac_pj} pJ x MACs + E_AC {em.e_ac_pj} pJ x SOPs, {em.name})"
    )
    if report.hardware is not None:
        hw = report.hardware
        parts = ", ".join(f"{k[:-3]} {v:.4f}" for k, v in hw.totals().items() if k != "energy_mj")
        print(
            f"  hardware model   {hw.energy_mj:.4f} mJ per image ({hw.model.name}, reuse {hw.reuse}: {parts})"
        )
        for reuse, totals in hw.totals_by_reuse.items():
            print(f"    at reuse {reuse:5s} {totals['energy_mj']:.4f} mJ")
    if report.unsupported_ops:
        print("  uncounted ops    " + ", ".join(f"{k} x{v}" for k, v in report.unsupported_ops.items()))
    if spiking:
        print("Note: the weights are random (a freshly built model).")
        print(f"Note: {report.notes[0]}.")
    if args.markdown:
        print()
        print(report.to_markdown(layers=args.layers), end="")
    try:
        if args.json:
            with open(args.json, "w") as f:
                f.write(report.to_json() + "\n")
            print(f"wrote {args.json}")
        if args.png:
            report.plot(args.png)
            print(f"wrote {args.png}")
    except OSError as e:
        print(f"error: cannot write {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
