"""The accounting report: totals per image, per-layer rows, per-stage sums, JSON, Markdown, PNG.

The papers' convention fills the main rows; a hardware preset adds :class:`HardwareReport`
(:mod:`.hardware`): per layer and per stage the energy of each component, which add up to the
totals.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from .energy import EnergyModel
from .hardware import COMPONENTS, Components, HardwareModel


@dataclass
class LayerRow:
    """One op type inside one module, per image.

    ``macs`` is fvcore's dense count (every time step included). How it is costed:
    ``cost == "mac"`` puts it in ``mac_ops`` (E_MAC each); ``cost == "ac"`` (spike or integer
    input) puts ``rate x macs`` in ``sops`` (E_AC each). ``neuron_updates`` (LIF rows) cost nothing.
    """

    name: str
    op: str
    stage: str
    kind: str  # input kind: "spike", "integer", "real" ("-" for LIF rows)
    cost: str  # "mac", "ac" or "none"
    rate: float | None  # mean input value of the module (None: not a hooked module)
    macs: float
    mac_ops: float
    sops: float
    energy_mac_mj: float
    energy_ac_mj: float
    neuron_updates: float = 0.0

    @property
    def energy_mj(self) -> float:
        return self.energy_mac_mj + self.energy_ac_mj


@dataclass
class StageRow:
    stage: str
    macs: float
    mac_ops: float
    sops: float
    neuron_updates: float
    energy_mac_mj: float
    energy_ac_mj: float
    ac_macs: float = 0.0  # the dense MACs of the AC-costed layers

    @property
    def energy_mj(self) -> float:
        return self.energy_mac_mj + self.energy_ac_mj

    @property
    def ac_rate(self) -> float | None:
        """SOPs per dense MAC of the AC-costed layers (the MAC-weighted mean input rate)."""
        # (not macs - mac_ops: with first_layer="once" the first conv's uncounted (T - 1) / T of
        # its MACs are neither)
        return self.sops / self.ac_macs if self.ac_macs else None


@dataclass
class HardwareRow:
    """One op type inside one module under the hardware model, per image (mJ per component)."""

    name: str
    op: str
    stage: str
    compute_mj: float
    addressing_mj: float
    weights_mj: float
    membrane_mj: float
    io_mj: float

    @classmethod
    def from_components(cls, name: str, op: str, stage: str, c: Components) -> HardwareRow:
        return cls(name, op, stage, *(getattr(c, k) * 1e-9 for k in COMPONENTS))  # pJ -> mJ

    def component(self, key: str) -> float:
        return getattr(self, f"{key}_mj")

    @property
    def energy_mj(self) -> float:
        return self.compute_mj + self.addressing_mj + self.weights_mj + self.membrane_mj + self.io_mj


@dataclass
class HardwareReport:
    """The hardware model's rows, at ``reuse``; ``totals_by_reuse`` has the totals at both."""

    model: HardwareModel
    reuse: str
    rows: list[HardwareRow]
    totals_by_reuse: dict[str, dict[str, float]]

    @staticmethod
    def sum_rows(rows: list[HardwareRow]) -> dict[str, float]:
        """Per-component sums (mJ) and their total."""
        out = {f"{k}_mj": sum(r.component(k) for r in rows) for k in COMPONENTS}
        out["energy_mj"] = sum(out.values())
        return out

    def totals(self) -> dict[str, float]:
        return self.sum_rows(self.rows)

    @property
    def energy_mj(self) -> float:
        return self.totals()["energy_mj"]

    @property
    def stages(self) -> list[tuple[str, dict[str, float]]]:
        """(stage, per-component sums) in the order the stages first appear."""
        groups: dict[str, list[HardwareRow]] = {}
        for r in self.rows:
            groups.setdefault(r.stage, []).append(r)
        return [(stage, self.sum_rows(rows)) for stage, rows in groups.items()]

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model.to_dict(),
            "reuse": self.reuse,
            "per_image": self.totals(),
            "per_image_by_reuse": {k: dict(v) for k, v in self.totals_by_reuse.items()},
            "stages": [{"stage": s, **t} for s, t in self.stages],
            "layers": [dict(asdict(r), energy_mj=r.energy_mj) for r in self.rows],
        }

    def to_markdown(self, layers: bool = True) -> list[str]:
        hw, t = self.model, self.totals()
        head = " | ".join(f"{k} (mJ)" for k in COMPONENTS)
        lines = [
            "",
            f"#### Hardware model: {hw.name} ({hw.source}), reuse of MAC layers: {self.reuse}",
            "",
            "| per image | " + " | ".join(COMPONENTS) + " | total |",
            "| --- |" + " ---: |" * (len(COMPONENTS) + 1),
            "| energy (mJ) | "
            + " | ".join(f"{t[f'{k}_mj']:.6f}" for k in COMPONENTS)
            + f" | {t['energy_mj']:.6f} |",
        ]
        for reuse, tot in self.totals_by_reuse.items():
            lines.append(
                f"| total at reuse={reuse} | "
                + " | ".join("" for _ in COMPONENTS)
                + f" | {tot['energy_mj']:.6f} |"
            )
        lines += ["", f"| stage | {head} | energy (mJ) |", "| --- |" + " ---: |" * (len(COMPONENTS) + 1)]
        for stage, st in self.stages:
            lines.append(
                f"| {stage} | "
                + " | ".join(f"{st[f'{k}_mj']:.6f}" for k in COMPONENTS)
                + f" | {st['energy_mj']:.6f} |"
            )
        if layers:
            lines += [
                "",
                f"| layer | op | {head} | energy (mJ) |",
                "| --- | --- |" + " ---: |" * (len(COMPONENTS) + 1),
            ]
            for r in self.rows:
                lines.append(
                    f"| {r.name or '(model)'} | {r.op} | "
                    + " | ".join(f"{r.component(k):.6f}" for k in COMPONENTS)
                    + f" | {r.energy_mj:.6f} |"
                )
        return lines


@dataclass
class Report:
    """Accounting of one model, per image. Build it with :func:`svm_models.accounting.profile`."""

    model: str
    params: int
    T: int
    spiking: bool
    input_shape: tuple[int, ...]  # one image, (C, H, W)
    images: int  # images the firing rates were averaged over (0: no rate pass)
    rates_from: str
    energy_model: EnergyModel
    conventions: dict[str, object]
    macs: float  # dense MACs (fvcore), all time steps
    mac_ops: float  # of which costed as MACs
    sops: float  # synaptic (accumulate) operations
    energy_mac_mj: float
    energy_ac_mj: float
    neuron_updates: float
    mean_firing_rate: float | None  # element-weighted over every spike input
    rows: list[LayerRow] = field(default_factory=list)
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    top1: float | None = None  # top-1 accuracy (%) of the rate pass, when labels were given
    notes: list[str] = field(default_factory=list)
    hardware: HardwareReport | None = None  # the hardware model, when a hardware preset was chosen

    # ---- derived views

    @property
    def energy_mj(self) -> float:
        return self.energy_mac_mj + self.energy_ac_mj

    @property
    def stages(self) -> list[StageRow]:
        """Rows summed per stage, in the order the stages first appear."""
        out: dict[str, StageRow] = {}
        for r in self.rows:
            s = out.setdefault(r.stage, StageRow(r.stage, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            s.macs += r.macs
            s.mac_ops += r.mac_ops
            s.sops += r.sops
            s.neuron_updates += r.neuron_updates
            s.energy_mac_mj += r.energy_mac_mj
            s.energy_ac_mj += r.energy_ac_mj
            if r.cost == "ac":
                s.ac_macs += r.macs
        return list(out.values())

    def totals(self) -> dict[str, object]:
        return {
            "params": self.params,
            "macs": self.macs,
            "mac_ops": self.mac_ops,
            "sops": self.sops,
            "energy_mj": self.energy_mj,
            "energy_mac_mj": self.energy_mac_mj,
            "energy_ac_mj": self.energy_ac_mj,
            "neuron_updates": self.neuron_updates,
            "mean_firing_rate": self.mean_firing_rate,
        }

    # ---- serialisation

    def to_dict(self) -> dict[str, object]:
        out = self._paper_dict()
        if self.hardware is not None:
            out["hardware"] = self.hardware.to_dict()
        return out

    def _paper_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "per_image": self.totals(),
            "T": self.T,
            "spiking": self.spiking,
            "input_shape": list(self.input_shape),
            "images": self.images,
            "rates_from": self.rates_from,
            "top1": self.top1,
            "energy_model": self.energy_model.to_dict(),
            "conventions": dict(self.conventions),
            "stages": [dict(asdict(s), energy_mj=s.energy_mj, ac_rate=s.ac_rate) for s in self.stages],
            "layers": [dict(asdict(r), energy_mj=r.energy_mj) for r in self.rows],
            "unsupported_ops": dict(self.unsupported_ops),
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    def summary(self) -> str:
        """One line: params, MACs, SOPs, energy, firing rate."""
        parts = [f"{self.model}: {self.params / 1e6:.2f}M params", f"{_g(self.macs)} GMACs"]
        if self.spiking:
            parts += [f"{_g(self.sops)} GSOPs", f"rate {_rate(self.mean_firing_rate)}"]
        parts.append(f"{self.energy_mj:.4f} mJ/image ({self.energy_model.name})")
        if self.hardware is not None:
            parts.append(
                f"hardware {self.hardware.energy_mj:.4f} mJ/image ({self.hardware.model.name}, "
                f"reuse {self.hardware.reuse})"
            )
        return ", ".join(parts)

    def to_markdown(self, layers: bool = True) -> str:
        em = self.energy_model
        lines = [f"### Accounting: {self.model}", ""]
        lines += ["| per image | value |", "| --- | --- |"]
        lines.append(f"| params | {self.params:,} |")
        lines.append(f"| input | {'x'.join(str(s) for s in self.input_shape)}, T = {self.T} |")
        lines.append(f"| MACs (dense, all time steps) | {_g(self.macs)} G |")
        lines.append(f"| costed as MAC | {_g(self.mac_ops)} G |")
        lines.append(f"| SOPs (costed as AC) | {_g(self.sops)} G |")
        lines.append(
            f"| energy | {self.energy_mj:.4f} mJ (MAC {self.energy_mac_mj:.4f} + AC {self.energy_ac_mj:.4f}) |"
        )
        lines.append(f"| mean firing rate | {_rate(self.mean_firing_rate)} |")
        lines.append(f"| neuron updates | {_g(self.neuron_updates)} G |")
        if self.top1 is not None:
            lines.append(f"| top-1 (rate pass) | {self.top1:.2f}% |")
        lines.append(
            f"| energy model | {em.name}: E_MAC {em.e_mac_pj} pJ, E_AC {em.e_ac_pj} pJ ({em.source}) |"
        )
        lines.append(f"| firing rates from | {self.rates_from} |")
        conv = ", ".join(f"{k}={v}" for k, v in self.conventions.items())
        lines.append(f"| conventions | {conv} |")
        lines += [
            "",
            "| stage | MACs (M) | as MAC (M) | SOPs (M) | AC rate | neuron updates (M) | E_MAC (mJ) | E_AC (mJ) | energy (mJ) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for s in self.stages:
            lines.append(
                f"| {s.stage} | {_m(s.macs)} | {_m(s.mac_ops)} | {_m(s.sops)} | {_rate(s.ac_rate)} | "
                f"{_m(s.neuron_updates)} | {s.energy_mac_mj:.5f} | {s.energy_ac_mj:.5f} | {s.energy_mj:.5f} |"
            )
        if layers:
            shown = [r for r in self.rows if r.macs > 0]
            lines += [
                "",
                "| layer | op | input | rate | MACs (M) | SOPs (M) | energy (mJ) |",
                "| --- | --- | --- | ---: | ---: | ---: | ---: |",
            ]
            for r in shown:
                lines.append(
                    f"| {r.name or '(model)'} | {r.op} | {r.kind} ({r.cost}) | {_rate(r.rate)} | "
                    f"{_m(r.macs)} | {_m(r.sops)} | {r.energy_mj:.6f} |"
                )
            hidden = len(self.rows) - len(shown)
            if hidden:
                lines.append(
                    f"\n{hidden} neuron rows (no MACs) are left out; their updates are in the stage table."
                )
        if self.unsupported_ops:
            lines.append(
                "\nUncounted ops (no handle): "
                + ", ".join(f"{k} x{v}" for k, v in self.unsupported_ops.items())
            )
        if self.hardware is not None:
            lines += self.hardware.to_markdown(layers)
        for note in self.notes:
            lines.append(f"\nNote: {note}")
        return "\n".join(lines) + "\n"

    def plot(self, path: str, title: str | None = None) -> str:
        """Bar chart of energy per stage (mJ per image), stacked MAC and AC energy; writes a PNG.

        With a hardware model, a second panel stacks its components per stage.
        """
        if self.hardware is not None:
            return self._plot_hardware(path, title)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        stages = self.stages
        names = [s.stage or "(model)" for s in stages]
        mac = [s.energy_mac_mj for s in stages]
        ac = [s.energy_ac_mj for s in stages]
        fig = Figure(figsize=(max(5.0, 0.9 * len(names) + 2.0), 4.0), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        xs = range(len(names))
        ax.bar(xs, mac, label=f"MAC ({self.energy_model.e_mac_pj} pJ)", color="#4c72b0")
        ax.bar(xs, ac, bottom=mac, label=f"AC ({self.energy_model.e_ac_pj} pJ)", color="#dd8452")
        top = max([m + a for m, a in zip(mac, ac)] + [0.0])
        ax.set_ylim(0.0, top * 1.15 if top > 0 else 1.0)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel("energy per image (mJ)")
        ax.set_title(title or f"{self.model}: {self.energy_mj:.4f} mJ/image ({self.energy_model.name})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
        return path

    plot_png = plot

    def _plot_hardware(self, path: str, title: str | None) -> str:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        stages = self.stages
        names = [s.stage or "(model)" for s in stages]
        hw_stages = dict(self.hardware.stages)
        fig = Figure(figsize=(max(9.0, 1.6 * len(names) + 3.0), 4.2), dpi=120)
        FigureCanvasAgg(fig)
        xs = list(range(len(names)))
        ax = fig.add_subplot(1, 2, 1)
        mac = [s.energy_mac_mj for s in stages]
        ax.bar(xs, mac, label=f"MAC ({self.energy_model.e_mac_pj} pJ)", color="#4c72b0")
        ax.bar(xs, [s.energy_ac_mj for s in stages], bottom=mac, label="AC", color="#dd8452")
        ax.set_title(f"paper convention: {self.energy_mj:.4g} mJ")
        ax2 = fig.add_subplot(1, 2, 2)
        bottom = [0.0] * len(names)
        colors = ("#4c72b0", "#937860", "#dd8452", "#55a868", "#8172b2")
        for key, color in zip(COMPONENTS, colors):
            values = [hw_stages.get(s.stage, {}).get(f"{key}_mj", 0.0) for s in stages]
            ax2.bar(xs, values, bottom=bottom, label=key, color=color)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax2.set_title(
            f"{self.hardware.model.name} (reuse {self.hardware.reuse}): {self.hardware.energy_mj:.4g} mJ"
        )
        for a in (ax, ax2):
            a.set_xticks(xs)
            a.set_xticklabels(names, rotation=30, ha="right")
            a.set_ylabel("energy per image (mJ)")
            a.legend(fontsize=7)
        fig.suptitle(title or self.model)
        fig.tight_layout()
        fig.savefig(path, format="png")
        return path


def _json_default(obj):
    if isinstance(obj, (EnergyModel, HardwareModel)):
        return obj.to_dict()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


def _g(x: float) -> str:
    return f"{x / 1e9:.4f}"


def _m(x: float) -> str:
    return f"{x / 1e6:.3f}"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
