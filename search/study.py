"""A validated study as the trials receive it: base config, search space, objective, how to run.

These frozen dataclasses are built by the parser (search/space.py, from ``ablations/*.yaml``)
and travel to every trial pickled inside ``TrialRuntime`` (search/trainable.py); the Optuna
searcher calls ``Study.sample`` to draw each trial's config overrides.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ctcae_core.config import ExperimentConfig

GRID_KEY = "_grid_point"  # Optuna parameter of the grid algorithm: an index into Study.grid_points()


@dataclass(frozen=True)
class Condition:
    """``key op value``; evaluated on the trial's values so far (base config for the rest)."""

    key: str
    op: str
    value: Any

    def holds(self, values: dict[str, Any]) -> bool:
        x = values[self.key]
        if self.op == "eq":
            return x == self.value
        if self.op == "ne":
            return x != self.value
        if self.op == "in":
            return x in self.value
        return {"gt": x > self.value, "ge": x >= self.value, "lt": x < self.value, "le": x <= self.value}[self.op]


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...] = ()  # choice / grid
    low: float | int | None = None  # uniform / loguniform / int
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    when: tuple[Condition, ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        return all(c.holds(values) for c in self.when)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial (define-by-run)."""
        if self.kind in ("choice", "grid"):
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "loguniform":
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=True)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step)


@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...]
    modes: tuple[str, ...]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0]


@dataclass(frozen=True)
class SearchSpec:
    algorithm: str = "tpe"
    num_samples: int = 8
    max_concurrent: int = 1
    seed: int = 0


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "none"
    max_t: int = 0
    grace_period: int = 0
    reduction_factor: float = 2.0
    metric: str = ""
    mode: str = ""


@dataclass(frozen=True)
class ResourcesSpec:
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    # One worker trained inside the Tune trial process itself (no Ray Train worker group to start;
    # the process and its imports are reused from trial to trial where Tune reuses actors).
    in_process: bool = False

    def per_worker(self) -> dict[str, float]:
        """One worker's Ray resources: its CPUs, and its GPUs where it has any."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker > 0 else {})}


@dataclass(frozen=True)
class Study:
    """A validated study: base config, search space, objective and how to run it."""

    name: str
    path: str
    text: str  # the study file as written (logged as an artifact)
    profile: str
    base_overrides: dict[str, Any]  # dotted key -> value, base.overrides and data merged
    base: ExperimentConfig
    params: tuple[Param, ...]  # in evaluation order (conditions after what they depend on)
    objective: Objective
    search: SearchSpec
    scheduler: SchedulerSpec
    resources: ResourcesSpec
    smoke: bool = False
    description: str = ""

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def sample(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run space: the trial's config overrides (dotted key -> value)."""
        if self.search.algorithm == "grid":
            points = self.grid_points()
            idx = trial.suggest_categorical(GRID_KEY, list(range(len(points))))
            return dict(points[idx])
        values = self.base.flat()
        out: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                v = p.suggest(trial)
                values[p.key] = v
                out[p.key] = v
        return out

    def optuna_sampler(self) -> Any:
        """The Optuna sampler of ``search.algorithm``, seeded with ``search.seed``."""
        import optuna

        seed = self.search.seed
        if self.search.algorithm == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        if self.search.algorithm == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        from search.samplers import GridSampler

        return GridSampler({GRID_KEY: list(range(len(self.grid_points())))}, seed=seed)

    def grid_points(self) -> list[dict[str, Any]]:
        """All grid combinations, inactive parameters dropped, duplicates removed (file order)."""
        base = self.base.flat()
        seen: set[tuple] = set()
        points: list[dict[str, Any]] = []
        for combo in itertools.product(*(p.values for p in self.params)):
            values = dict(base)
            point: dict[str, Any] = {}
            for p, v in zip(self.params, combo):
                if p.active(values):
                    values[p.key] = v
                    point[p.key] = v
            sig = tuple(sorted((k, repr(v)) for k, v in point.items()))
            if sig not in seen:
                seen.add(sig)
                points.append(point)
        return points

    def resolve(self, overrides: dict[str, Any]) -> ExperimentConfig:
        """The trial's full config: base plus the trial's sampled values (private keys ignored)."""
        return self.base.with_overrides({k: v for k, v in overrides.items() if not k.startswith("_")})
