"""The per-epoch table: the seed's metrics in aligned columns, the best epoch marked."""

from __future__ import annotations

import math

from kmervae.base.metric_keys import LOWEST_VAL_LOSS, Objective
from kmervae.core.epoch_table import EpochPrinter, header, row, table


def epoch(i: int, loss: float, gated: bool = True) -> dict[str, float]:
    m = {
        "epoch": i, "train/loss": loss + 1, "val/loss": loss, "val/kl": 0.5, "val/mse_7": 2.0,
        "val/mse_7_present": 3.0, "val/mse_7_absent": 1.0, "val/frac_present": 0.25, "val/mse_4": 0.1,
        "val/mse_3": 0.05, "val/mse_gc": 0.001, "lr": 1e-3, "samples_per_s": 12345.6,
    }  # fmt: skip
    if gated:
        m.update({"val/gate_bce": 0.3, "val/gate_acc": 0.9, "val/value_mse": 0.2})
    return m


def test_rows_align_with_the_header_and_only_reported_keys_get_columns():
    gated, plain = header(epoch(0, 5.0)), header(epoch(0, 5.0, gated=False))
    assert "gate_acc" in gated and "gate_acc" not in plain and "knn_acc" not in gated  # unlabelled: no score
    line = row(0, 10, epoch(0, 5.0))
    assert len(line) == len(gated) and line.startswith("1/10")
    assert line.split()[1:4] == ["6", "5", "0.5"]  # train_loss, val_loss, kl in the header's order
    assert "12,346" in line and "1.00e-03" in line


def test_the_best_epoch_so_far_is_marked_and_the_table_marks_the_final_best():
    printer = EpochPrinter(3, LOWEST_VAL_LOSS)
    history = [epoch(0, 5.0), epoch(1, 6.0), epoch(2, 4.0)]
    lines = [line for i, m in enumerate(history) for line in printer.lines(i, m)]
    assert lines[0] == header(history[0]) and len(lines) == 4  # the header once
    assert [line.split()[1] == "*" for line in lines[1:]] == [True, False, True]
    text = table(history, 3, LOWEST_VAL_LOSS).splitlines()
    assert [line.startswith(f"{i}/3 *") for i, line in enumerate(text[1:4], start=1)] == [False, False, True]
    resumed = EpochPrinter(4, LOWEST_VAL_LOSS)
    resumed.prime(history)  # a resumed run: epoch 4 is no better than epoch 3 was
    assert not resumed.lines(3, epoch(3, 4.5))[1].startswith("4/4 *")


def test_one_objective_picks_the_best_epoch_either_way_and_skips_non_finite_values():
    history = [epoch(0, 5.0), epoch(1, 6.0), epoch(2, math.nan), epoch(3, 6.0)]
    assert LOWEST_VAL_LOSS.best_epoch(history) is history[0]
    history[1]["val/knn_acc"], history[3]["val/knn_acc"] = 0.7, 0.9
    assert Objective("val/knn_acc").best_epoch(history) is history[3]  # higher is better; missing values skipped
    assert Objective("val/knn_acc").mode == "max" and LOWEST_VAL_LOSS.mode == "min"
    assert LOWEST_VAL_LOSS.best_epoch([epoch(0, math.nan), epoch(1, math.inf)]) is None
    assert LOWEST_VAL_LOSS.best_epoch([epoch(0, 5.0), epoch(1, 5.0)]) is not None
    assert LOWEST_VAL_LOSS.best_of([("a", 2.0), ("b", 1.0), ("c", 1.0)], lambda kv: kv[1]) == (
        "b",
        1.0,
    )  # first of equals


def test_values_spanning_orders_of_magnitude_get_a_log_axis():
    from kmervae.core.plots import spans_orders

    assert spans_orders([2041.0, 187_168.0, math.nan])  # early KL values of a distorted run
    assert not spans_orders([0.90, 0.96])  # accuracies
    assert not spans_orders([-1.0, 100.0]) and not spans_orders([])  # a log axis needs positive values
