"""Several training seeds per proposed setting: a Tune searcher that repeats its inner searcher's
proposals and tells it their median.

One training seed's count of near-complete bins can differ from the next seed's by two or three
(bench/RESULTS.md "Issue 38"), so a sweep that ranks single runs ranks luck. `SeedRepeats` asks
the inner searcher (Optuna) for a setting, hands it out `seeds` times with the repeat's index in
the trial's config (under `index_key`, `sweep.SEED_INDEX`: the trial trains with train.seed = the
base seed + it), and reports the median of the repeats' objective back once all have ended. It
tells the inner searcher nothing of a trial's epochs: one seed's course says little of a median's.

Ray ships `ray.tune.search.Repeater` for this, but its `save` keeps only the inner searcher: the
groups are lost, and a resumed sweep dies with a KeyError when a repeat started before the stop
ends (ray-project/ray#11918, open since 2020; the fix in #65952 was closed). kmervae's sweeps are
stopped and resumed (`--resume`), so this searcher saves its groups beside the inner state.
"""

from __future__ import annotations

import copy
import math
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search import Searcher


class SeedRepeats(Searcher):
    """`inner`'s proposals, each handed out `seeds` times; `inner` hears the median of their objective."""

    def __init__(self, inner: Searcher, seeds: int, index_key: str) -> None:
        self.inner = inner
        self.seeds = seeds
        self.index_key = index_key
        self.groups: list[dict[str, Any]] = []  # {"config", "primary", "trials": {trial_id: score or None}}
        self.group_of: dict[str, int] = {}
        super().__init__(metric=inner.metric, mode=inner.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        done = self.inner.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.inner.metric, self.inner.mode
        return done

    def suggest(self, trial_id: str) -> dict | None:
        group = self.groups[-1] if self.groups else None
        if group is None or len(group["trials"]) >= self.seeds:
            config = self.inner.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            group = {"config": copy.deepcopy(config), "primary": trial_id, "trials": {}}
            self.groups.append(group)
        index = len(group["trials"])
        group["trials"][trial_id] = None
        self.group_of[trial_id] = len(self.groups) - 1
        return {**copy.deepcopy(group["config"]), self.index_key: index}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        group = self._group(trial_id)
        if group is None:  # suggested after the last saved state of a stopped sweep: nothing to tell
            return
        value = (result or {}).get(self.metric)
        group["trials"][trial_id] = float(value) if value is not None and not error else math.nan
        scores = list(group["trials"].values())
        if len(scores) < self.seeds or any(score is None for score in scores):
            return
        finite = [s for s in scores if math.isfinite(s)]
        if finite:
            self.inner.on_trial_complete(group["primary"], {self.metric: float(np.median(finite))})
        else:
            self.inner.on_trial_complete(group["primary"], None, error=True)

    def _group(self, trial_id: str) -> dict | None:
        index = self.group_of.get(trial_id)
        return None if index is None else self.groups[index]

    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            inner = Path(folder) / "inner.pkl"
            self.inner.save(str(inner))
            state = {"inner": inner.read_bytes(), "groups": self.groups, "group_of": self.group_of}
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        self.groups, self.group_of = state["groups"], state["group_of"]
        with tempfile.TemporaryDirectory() as folder:
            inner = Path(folder) / "inner.pkl"
            inner.write_bytes(state["inner"])
            self.inner.restore(str(inner))
