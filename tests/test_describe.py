"""The layer table and the architecture diagram."""

from __future__ import annotations

from kmervae.core.config import PRESETS
from kmervae.core.describe import draw_diagram, format_table, layer_table
from kmervae.core.model import BranchedVAE, count_parameters


def test_table_lists_every_block_with_the_exact_total():
    model = BranchedVAE(PRESETS["final"])
    rows = layer_table(model)
    assert sum(r.parameters for r in rows) == count_parameters(model) == 27_844_555
    shapes = {r.name: r.output_shape for r in rows}
    assert shapes["enc7.0"] == ("B", 1024) and shapes["z_mean"] == ("B", 512)
    assert shapes["head7_gate"] == ("B", 8192) and shapes["head4"] == ("B", 137)
    text = format_table(model)
    assert text.splitlines()[-1].split()[:2] == ["total", "27,844,555"]


def test_diagram_is_written_as_png_and_svg(tmp_path):
    png = draw_diagram(PRESETS["tiny"], tmp_path / "tiny.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    svg = draw_diagram(PRESETS["final"], tmp_path / "sub" / "final.svg").read_text()
    assert "<svg" in svg and "27,844,555" in svg


def test_the_abundance_branch_is_a_fourth_lane_of_table_and_diagram(tmp_path):
    import dataclasses

    cfg = dataclasses.replace(PRESETS["tiny"], abundance_widths=(16, 8), abundance_samples=4)
    model = BranchedVAE(cfg)
    shapes = {r.name: r.output_shape for r in layer_table(model)}
    assert shapes["enc_ab.0"] == ("B", 16) and shapes["enc_ab.1"] == ("B", 8)
    assert shapes["proj_ab"] == ("B", 8) and shapes["head_ab"] == ("B", 5)  # 4 share logits + log depth
    assert format_table(model).splitlines()[-1].split()[1] == f"{count_parameters(model):,}"
    svg = draw_diagram(cfg, tmp_path / "abundance.svg").read_text()
    assert "depth shares 4" in svg and "shares 4 (softmax)" in svg and f"{count_parameters(model):,}" in svg
    # What the branches read is drawn as configured: no length input, log depth ratios.
    other = dataclasses.replace(cfg, length_input=False, abundance_input="log_ratio")
    svg = draw_diagram(other, tmp_path / "log_ratio.svg").read_text()
    assert "log depth ratios 4" in svg and "+ GC + length" not in svg and "+ GC" in svg
