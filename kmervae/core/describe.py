"""See the model: a layer table with exact parameter counts, and a diagram of the branches.

`kmervae describe` prints the table and draws the diagram; training runs log both to
MLflow. The table is read off the real module (forward hooks on a real batch), so it
cannot drift from the model; the diagram is drawn from the same config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kmervae.core.config import ModelConfig
from kmervae.core.model import N3, N4, N7, BranchedVAE, count_parameters


@dataclass(frozen=True)
class LayerRow:
    """One block of the model."""

    name: str
    output_shape: tuple[int, ...]
    parameters: int


def _blocks(model: BranchedVAE) -> list[tuple[str, nn.Module]]:
    """The named blocks, in data-flow order: each dense block, each linear head."""
    blocks: list[tuple[str, nn.Module]] = []
    branches = ("7", "4", "3", "_ab") if model.cfg.uses_abundance else ("7", "4", "3")
    for name in (*(f"enc{k}" for k in branches), "enc_trunk"):
        blocks += [(f"{name}.{i}", m) for i, m in enumerate(getattr(model, name))]
    blocks += [("z_mean", model.z_mean), ("z_log_var", model.z_log_var)]
    blocks += [(f"dec_trunk.{i}", m) for i, m in enumerate(model.dec_trunk)]
    for k in branches:
        blocks.append((f"proj{k}", getattr(model, f"proj{k}")))
        blocks += [(f"dec{k}.{i}", m) for i, m in enumerate(getattr(model, f"dec{k}"))]
    heads = ("head7_values", "head7_gate", "head7_gc", "head4", "head3")
    for name in (*heads, "head_ab") if model.cfg.uses_abundance else heads:
        if getattr(model, name) is not None:
            blocks.append((name, getattr(model, name)))
    return blocks


@torch.no_grad()
def layer_table(model: BranchedVAE) -> list[LayerRow]:
    """Every block with its output shape (batch of B) and parameter count."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, ("B", *out.shape[1:])))
        for name, module in _blocks(model)
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        batch = 2
        model(
            torch.full((batch,), 5000, device=device),
            torch.full((batch,), 0.5, device=device),
            torch.ones(batch, N7, dtype=torch.uint8, device=device),
            torch.ones(batch, N4, dtype=torch.uint8, device=device),
            torch.ones(batch, N3, dtype=torch.uint8, device=device),
            torch.ones(batch, model.cfg.abundance_samples, device=device) if model.cfg.uses_abundance else None,
        )
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [LayerRow(name, shapes[name], count_parameters(module)) for name, module in _blocks(model)]


def format_table(model: BranchedVAE) -> str:
    """The layer table as text: block, output shape, parameters, share of the total, and the exact total."""
    rows = layer_table(model)
    total = count_parameters(model)
    assert sum(r.parameters for r in rows) == total, "a block is missing from the table"
    lines = [f"{'block':<16} {'output':>12} {'parameters':>12} {'share':>7}"]
    for row in rows:
        shape = "(" + ", ".join(str(s) for s in row.output_shape) + ")"
        lines.append(f"{row.name:<16} {shape:>12} {row.parameters:>12,} {row.parameters / total:>7.1%}")
    lines.append(f"{'total':<16} {'':>12} {total:>12,} {1:>7.1%}")
    return "\n".join(lines)


COLORS = {"in": "#dbe9f6", "enc": "#9ecae1", "trunk": "#fdd0a2", "z": "#fc9272", "dec": "#a1d99b", "head": "#e5e5e5"}
"""Box colours of the diagram by kind: input, encoder, trunk, latent, decoder, head."""


def _branches(cfg: ModelConfig) -> tuple[dict, dict, dict, dict]:
    """Per branch ('7', '4', '3' and 'ab' with an abundance branch): its lane (y), hidden
    widths, input label and head label."""
    side = "+ GC + length" if cfg.length_input else "+ GC"
    lanes = {"7": 2.0, "4": 1.0, "3": 0.0}
    widths = {"7": cfg.kmer7_widths, "4": cfg.kmer4_widths, "3": cfg.kmer3_widths}
    inputs = {"7": f"7-mers {N7:,}\n{side}", "4": f"4-mers {N4}\n{side}", "3": f"3-mers {N3}\n{side}"}
    heads = {
        "7": f"values {N7:,}" + (f"\ngate {N7:,}" if cfg.gate_k7 else "") + "\nGC",
        "4": f"4-mers {N4}\nGC",
        "3": f"3-mers {N3}\nGC",
    }
    if cfg.uses_abundance:  # the fourth branch: depth shares (or log ratios) per sample + log total depth
        n = cfg.abundance_samples
        lanes["ab"], widths["ab"] = -1.0, cfg.abundance_widths
        reads = "depth shares" if cfg.abundance_input == "shares" else "log depth ratios"
        inputs["ab"] = f"{reads} {n}\n+ log depth"
        heads["ab"] = f"shares {n} (softmax)\nlog depth"
    return lanes, widths, inputs, heads


class _Canvas:
    """Boxes and arrows on one matplotlib axis."""

    def __init__(self, ax):
        self.ax = ax

    def box(self, x: float, y: float, text: str, kind: str) -> tuple[float, float]:
        bbox = dict(boxstyle="round,pad=0.35", fc=COLORS[kind], ec="#555555")
        self.ax.text(x, y, text, ha="center", va="center", fontsize=7.5, bbox=bbox)
        return x, y

    def arrow(self, a: tuple[float, float], b: tuple[float, float]) -> None:
        style = dict(arrowstyle="->", color="#555555", lw=0.8)
        self.ax.annotate("", xy=(b[0] - 0.42, b[1]), xytext=(a[0] + 0.42, a[1]), arrowprops=style)

    def chain(self, start: tuple[float, float], labels, kind: str, step: float = 1.2) -> tuple[float, float]:
        """Boxes `labels` left to right after `start`, each joined to the one before; the last."""
        prev = start
        for label in labels:
            cur = self.box(prev[0] + step, prev[1], f"{label}", kind)
            self.arrow(prev, cur)
            prev = cur
        return prev


def draw_diagram(cfg: ModelConfig, path: str | Path) -> Path:
    """Draw the branched architecture (PNG or SVG by suffix) and return the path."""
    from matplotlib.figure import Figure  # no pyplot: nothing process-wide (backend, figure registry) changes

    path = Path(path)
    lanes, widths, inputs, heads = _branches(cfg)
    concat = sum(w[-1] for w in widths.values())
    depth = max(len(w) for w in widths.values())
    trunk = cfg.trunk_widths
    fig_w = 2.0 + 1.25 * (2 * depth + 2 * len(trunk) + 6)
    fig = Figure(figsize=(fig_w, 5.6 if cfg.uses_abundance else 4.6))
    ax = fig.subplots()
    ax.axis("off")
    canvas = _Canvas(ax)
    ends = {k: canvas.chain(canvas.box(0.0, y, inputs[k], "in"), widths[k], "enc") for k, y in lanes.items()}
    x = 1.2 * (depth + 1)
    start = canvas.box(x, 1.0, f"concat\n{concat}", "trunk")
    for k in lanes:
        canvas.arrow(ends[k], start)
    encoded = canvas.chain(start, trunk, "trunk")
    z = canvas.chain(encoded, [f"z_mean, z_log_var\nz  {cfg.latent_dim}"], "z", step=1.3)
    split = canvas.chain(z, (*reversed(trunk), concat), "trunk")
    last = split[0] + 1.3 + 1.2 * (depth - 1) + 1.3
    for k, y in lanes.items():  # decoder branches: projection, mirrored widths, heads
        proj = canvas.box(split[0] + 1.3, y, f"proj {widths[k][-1]}", "dec")
        canvas.arrow(split, proj)
        canvas.arrow(canvas.chain(proj, reversed(widths[k][:-1]), "dec"), canvas.box(last, y, heads[k], "head"))
    note = "GC = mean of\nthe 3 branch GCs\n\noutput 8,361 =\n[7-, 4-, 3-mers, GC]"
    ax.text(
        last + 1.0,
        1.0,
        note + ("\n+ depth shares\nand log depth" if cfg.uses_abundance else ""),
        fontsize=7.5,
        va="center",
    )
    params = count_parameters(BranchedVAE(cfg))
    title = f"BranchedVAE: {params:,} parameters, latent {cfg.latent_dim}, gate {'on' if cfg.gate_k7 else 'off'}"
    ax.set_title(title + "  (every box: Linear -> BatchNorm -> LeakyReLU)", fontsize=9)
    ax.set_xlim(-0.8, last + 2.4)
    ax.set_ylim(min(lanes.values()) - 0.6, 2.6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path
