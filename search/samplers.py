"""Optuna sampler tweaks for Ray Tune's ask/tell use (kept in a module of their own: the searcher,
sampler included, is pickled with the experiment state, so the classes must be importable)."""
from __future__ import annotations

from typing import Any

import optuna


class GridSampler(optuna.samplers.GridSampler):
    """GridSampler without its end-of-grid ``study.stop()``.

    Tune's ``num_samples`` ends the study; ``study.stop()`` only works inside ``study.optimize()``
    and raises under the ask/tell interface that ``OptunaSearch`` uses.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None
