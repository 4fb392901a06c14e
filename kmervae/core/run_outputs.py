"""What every training run leaves in its output folder, whichever engine trained it.

The local engine, a Ray Train run and each trial of a sweep write the same files, chosen
here once: the best and last checkpoints, the layer table and diagram, the epoch table,
every epoch's metrics as JSON lines and the training curves. `RunOutputs.write` returns the
ones MLflow keeps as artifacts (the tracking layer logs them and the checkpoints alike).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kmervae.base.metric_keys import LOWEST_VAL_LOSS, Objective
from kmervae.core.config import RunConfig
from kmervae.core.epoch_table import EPOCHS_FILE, table

BEST_FILE = "best.pt"
"""The checkpoint of the best epoch by the run's objective."""
LAST_FILE = "last.pt"
"""The checkpoint of the last epoch (resume from it)."""
METRICS_FILE = "metrics.jsonl"
"""Every epoch's metrics, one JSON object per line (the keys of `metric_keys`)."""
CURVES_FILE = "curves.png"
MODEL_TABLE_FILE = "model.txt"
MODEL_DIAGRAM_FILE = "model.png"
ARTIFACT_FILES = (MODEL_TABLE_FILE, EPOCHS_FILE, METRICS_FILE, MODEL_DIAGRAM_FILE, CURVES_FILE)
"""What `RunOutputs.write` writes where matplotlib is installed (the last two need it)."""
CHECKPOINT_FILES = (BEST_FILE, LAST_FILE)


@dataclass(frozen=True)
class RunOutputs:
    """A training run's output folder and what it holds."""

    folder: Path
    objective: Objective = LOWEST_VAL_LOSS

    @property
    def best_checkpoint(self) -> Path:
        return self.folder / BEST_FILE

    @property
    def last_checkpoint(self) -> Path:
        return self.folder / LAST_FILE

    def write(
        self, config: RunConfig, history: Sequence[Mapping[str, float]], log: Callable[[str], None]
    ) -> list[Path]:
        """Write the run's description, epoch table, metrics and curves beside its checkpoints;
        returns them (the artifacts). matplotlib is optional: a bare GPU host gets the text files."""
        from kmervae.core.describe import draw_diagram, format_table
        from kmervae.core.model import BranchedVAE

        self.folder.mkdir(parents=True, exist_ok=True)
        written = [self.folder / MODEL_TABLE_FILE, self.folder / EPOCHS_FILE, self.folder / METRICS_FILE]
        written[0].write_text(format_table(BranchedVAE(config.model)) + "\n")
        written[1].write_text(table(list(history), config.train.epochs, self.objective))
        written[2].write_text("".join(json.dumps(dict(m)) + "\n" for m in history))
        try:
            from kmervae.core.plots import plot_training_curves

            written.append(draw_diagram(config.model, self.folder / MODEL_DIAGRAM_FILE))
            written.append(plot_training_curves(list(history), self.folder / CURVES_FILE))
        except ImportError:
            log(f"note: matplotlib is not installed; {MODEL_DIAGRAM_FILE} and {CURVES_FILE} not drawn")
        return written
