"""Training memory per image: what autograd keeps for the backward, and the CUDA peak.

``profile_training_memory(model, batch)`` runs one training step (forward in train mode, loss,
backward) and reports:

* ``saved_bytes``: the bytes autograd holds for the backward at the end of the forward, i.e.
  every tensor saved by any op (caught with ``torch.autograd.graph.saved_tensors_hooks``),
  each storage counted once, parameters excluded (they exist whether or not one trains).
  Under autocast the low-precision weight copies the ops save are counted: they are real memory.
* ``saved_bytes_per_image``: ``saved_bytes`` / batch size.
* ``peak_bytes``: on CUDA, the allocator's peak over the step minus what was allocated before
  (model, optimizer state, batch); None on the CPU.

The model's state (weights, BN statistics, gradients) is restored afterwards.

CLI: ``python -m svm_models.memory --model svmamba_cifar --img-size 32 --compare`` prints the
bytes per image with ``memory_efficient`` on and off, fp32 and bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .base import MIN_IMG_SIZE, module_modes, restore_modes
from .layers import ConvBN
from .spike_layers import set_memory_efficient

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class MemoryReport:
    batch_size: int
    saved_bytes: int
    saved_tensors: int
    peak_bytes: int | None
    precision: str
    # Saved bytes by the class of the innermost module whose forward saved them ("(model)" for
    # ops of the model's own forward).
    by_module: dict[str, int]

    @property
    def saved_bytes_per_image(self) -> float:
        return self.saved_bytes / self.batch_size

    @property
    def peak_bytes_per_image(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / self.batch_size


class _SavedBytesCounter:
    """Pack hook that records every saved tensor's storage once (parameters excluded), and the
    module that saved it (forward hooks keep a stack of the modules running)."""

    def __init__(self, model: nn.Module):
        self.skip = {self._key(p) for p in model.parameters()}
        self.sizes: dict = {}
        self.owner: dict = {}
        self.stack = ["(model)"]
        self.handles = []
        # The conv and BN inside a Conv -> BN unit get no hooks: hooks there would make the
        # unit take its plain path (see spike_layers.conv_bn_supported); the unit owns their bytes.
        inside_units = {id(c) for m in model.modules() if isinstance(m, ConvBN) for c in m.children()}
        for m in model.modules():
            if m is model or id(m) in inside_units:
                continue
            name = type(m).__name__
            self.handles.append(m.register_forward_pre_hook(partial(self._enter, name)))
            self.handles.append(m.register_forward_hook(self._exit))

    # Hooks return None: a pre-hook's return value would replace the module's inputs.
    def _enter(self, name: str, module, args) -> None:
        self.stack.append(name)

    def _exit(self, module, args, output) -> None:
        self.stack.pop()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def by_module(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, n in self.sizes.items():
            out[self.owner[key]] = out.get(self.owner[key], 0) + n
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    @staticmethod
    def _key(t: torch.Tensor):
        s = t.untyped_storage()
        return (t.device, s.data_ptr())

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = self._key(t)
        if key not in self.skip and key not in self.sizes:
            self.sizes[key] = t.untyped_storage().nbytes()
            self.owner[key] = self.stack[-1]
        # Keeping t alive until the backward (as autograd would) stops its memory being reused,
        # so two storages never share a key.
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def _split_batch(batch, num_classes: int):
    if isinstance(batch, (tuple, list)):
        images, targets = batch[0], batch[1]
    else:
        images, targets = batch, None
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("batch must be images (B, C, H, W) or a tuple (images, targets)")
    if targets is None:
        targets = torch.arange(images.shape[0], device=images.device) % num_classes
    return images, targets


def profile_training_memory(model: nn.Module, batch, precision: str = "fp32") -> MemoryReport:
    """Saved-for-backward bytes (and CUDA peak) of one training step of ``model`` on ``batch``.

    ``batch``: images (B, C, H, W) on the model's device, or (images, targets); without targets
    the loss is cross-entropy against arbitrary labels. ``precision``: "fp32", or "bf16" / "fp16"
    autocast on the batch's device.
    """
    if precision not in AMP_DTYPES:
        raise ValueError(f"precision must be one of {sorted(AMP_DTYPES)}, got {precision!r}")
    num_classes = getattr(model, "num_classes", 1000)
    images, targets = _split_batch(batch, num_classes)
    device = images.device
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {p: p.grad for p in model.parameters()}
    modes = module_modes(model)
    counter = _SavedBytesCounter(model)
    amp = AMP_DTYPES[precision]
    cuda = device.type == "cuda"
    try:
        model.train()
        for p in model.parameters():
            p.grad = None
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack), autocast:
            loss = F.cross_entropy(model(images).float(), targets)
        loss.backward()
        peak = None
        if cuda:
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - before
    finally:
        counter.remove()
        model.load_state_dict(state)
        for p, g in grads.items():
            p.grad = g
        restore_modes(modes)
    return MemoryReport(
        images.shape[0], sum(counter.sizes.values()), len(counter.sizes), peak, precision, counter.by_module()
    )


def compare_memory_efficient(model: nn.Module, batch, precision: str = "fp32") -> dict:
    """``{True: report, False: report}``: the same step with the memory-lean layers on and off."""
    flag = getattr(model, "memory_efficient", None)
    if flag is None:
        raise ValueError(f"{type(model).__name__} has no memory_efficient switch")
    try:
        return {
            on: profile_training_memory(set_memory_efficient(model, on), batch, precision)
            for on in (False, True)
        }
    finally:
        set_memory_efficient(model, flag)


# --------------------------------------------------------------------------------------------
# CLI


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one ``error:`` line on stderr and exit status 2 (the scripts' convention)."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m svm_models.memory",
        description="Saved-for-backward bytes per image of one training step (and the CUDA peak).",
    )
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--T", type=int, default=None, help="time steps of a spiking model")
    p.add_argument(
        "--precision", choices=sorted(AMP_DTYPES), action="append", help="repeatable; default fp32"
    )
    p.add_argument("--compare", action="store_true", help="memory_efficient on and off (spiking models)")
    p.add_argument("--plain", action="store_true", help="build with memory_efficient=False")
    p.add_argument(
        "--by-module", action="store_true", help="also print the saved MiB / image per module class"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def main(argv: list[str] | None = None) -> int:
    import svm_models

    args = build_parser().parse_args(argv)
    if args.model not in svm_models.list_models():
        print(f"error: unknown model {args.model!r}; see svm_models.list_models()", file=sys.stderr)
        return 2
    if args.plain and args.compare:
        print("error: --compare builds both ways itself; drop --plain", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if args.num_classes < 1:  # (the step's loss needs classes: 0 would divide by zero)
        print(f"error: --num-classes must be >= 1, got {args.num_classes}", file=sys.stderr)
        return 2
    if args.img_size is not None and args.img_size < MIN_IMG_SIZE:
        print(f"error: --img-size must be >= {MIN_IMG_SIZE}, got {args.img_size}", file=sys.stderr)
        return 2
    overrides = {} if args.T is None else {"T": args.T}
    if args.plain:
        overrides["memory_efficient"] = False
    torch.manual_seed(args.seed)
    try:
        model = svm_models.create_model(
            args.model, num_classes=args.num_classes, img_size=args.img_size, **overrides
        ).to(args.device)
    except (TypeError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.compare and not hasattr(model, "memory_efficient"):
        print(f"error: {args.model} has no memory_efficient switch (not a spiking model)", file=sys.stderr)
        return 2
    size = args.img_size or model.img_size
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, 3, size, size, generator=gen).to(args.device)
    print(f"{args.model} at {size} px, batch {args.batch_size}, T = {model.T if model.spiking else '-'}")
    print("| precision | memory_efficient | saved MiB / image | peak MiB / image (CUDA) | new / old |")
    print("| --- | --- | --- | --- | --- |")
    for precision in args.precision or ["fp32"]:
        if args.compare:
            reports = compare_memory_efficient(model, images, precision)
        else:
            reports = {
                getattr(model, "memory_efficient", None): profile_training_memory(model, images, precision)
            }
        old = reports.get(False)
        for flag, r in reports.items():
            ratio = f"{r.saved_bytes / old.saved_bytes:.3f}" if (old is not None and flag) else ""
            print(
                f"| {precision} | {flag} | {_mib(r.saved_bytes_per_image)} | "
                f"{_mib(r.peak_bytes_per_image)} | {ratio} |"
            )
            if args.by_module:
                parts = ", ".join(f"{k} {_mib(v / r.batch_size)}" for k, v in r.by_module.items())
                print(f"|  |  | {parts} |  |  |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
