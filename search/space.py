"""Study files (``ablations/*.yaml``): one schema, parsed and validated in full before Ray starts.

The parser: ``load_study(path)`` / ``parse_study(text)`` return a ``Study`` (search/study.py, the
runtime dataclasses that travel to the trials).

Schema (every section but ``base`` and ``space`` is optional; unknown keys are errors)::

    name: arch                       # study name (default: the file's stem); one Optuna study per name
    description: free text
    base:
      profile: ctcae_tetrominoes_small   # a ctcae_core.config profile (see list_profiles())
      overrides:                          # dotted ExperimentConfig keys -> values
        train.steps: 2000
    data:                            # shorthand for data.* overrides (any DataConfig field)
      dataset: tetrominoes           # generated name or dataset directory
      resolution: 32
      train_n_objects: "<=4"         # object-count filter for training ("" = all)
      test_n_objects: [5, 6]         # object counts also evaluated separately at test time
    space:                           # dotted ExperimentConfig keys -> one distribution each
      model.decoder: {choice: [upsample, transpose]}   # categorical
      model.out_sigmoid: {grid: [false, true]}         # grid axis (search.algorithm: grid only)
      train.lr: {loguniform: [1.0e-4, 1.0e-3]}         # float, log scale, low > 0
      contrastive.temperature: {uniform: [0.02, 0.2], step: 0.01}   # float (step optional)
      contrastive.dec_anchors: {int: [20, 100], step: 10}           # int, inclusive (log: true optional)
      contrastive.weight: {grid: [0.0, 1.0e-4]}
      contrastive.dec_top_k:
        choice: [3, 5]
        when: {contrastive.weight: {gt: 0}}   # condition: sampled only if it holds, else base value
    objective:                       # one metric ...
      metric: val_ari_fg
      mode: max
      # ... or several (multi-objective study):  metrics: [{metric: val_ari_fg, mode: max},
      #                                                   {metric: val_mse, mode: min}]
    search:
      algorithm: tpe                 # tpe | random | grid (all through Optuna, so the study is stored)
      num_samples: 16                # grid: default and maximum = the number of grid points
      max_concurrent: 2
      seed: 0
    scheduler:
      type: asha                     # asha | none
      max_t: 2000                    # budget in training steps (default: train.steps)
      grace_period: 500              # default: max(train.eval_every, max_t // 8)
      reduction_factor: 2
      metric: val_ari_fg             # default: the (first) objective metric
      mode: max
    resources:
      workers: 1                     # Ray Train workers per trial (DDP)
      cpus_per_worker: 1
      gpus_per_worker: 0             # > 0: NCCL on GPUs
      max_failures: 2                # worker failures a trial survives (restart from its last checkpoint)
      in_process: false              # true (workers: 1 only): train in the Tune trial process, no
                                     # Ray Train worker group: seconds less per trial

Conditions (``when``) map config keys to ``{op: value}`` with op in eq, ne, gt, ge, lt, le, in
(a bare value means eq); all must hold. A condition may name another space parameter (evaluated
after it; cycles are errors) or any config key (its base value). An inactive parameter keeps its
base value. For the grid algorithm, combinations that become identical once inactive parameters
are dropped are run once.

Floats may be written ``1e-4`` (YAML 1.1 would read that as a string; the loader fixes it).

``--smoke-test`` (``load_study(..., smoke=True)``): the ``tiny`` profile replaces the base, the
base overrides and the ``data`` section are dropped (``data.test_n_objects`` kept), the ASHA budget
follows tiny's steps, and at most 4 trials run.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ctcae_core.config import (
    ConfigError, ExperimentConfig, UniqueKeyLoader, get_profile, key_type, list_profiles, suggest,
)
from ctcae_core.metric_names import reported_metric_pattern, reported_metrics_help
from search.study import (
    Condition,
    Objective,
    Param,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    Study,
)


class StudyError(ValueError):
    """A study file is invalid; the message names the file, the key and the valid choices."""


ALGORITHMS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "none")
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "int")
CONDITION_OPS = ("eq", "ne", "gt", "ge", "lt", "le", "in")
TOP_LEVEL = ("name", "description", "base", "data", "space", "objective", "search", "scheduler", "resources")
SMOKE_PROFILE = "tiny"
DATA_KEYS = ("data.dataset", "data.n_train", "train.batch_size")  # searched values checked against the data
SMOKE_MAX_SAMPLES = 4
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # also a directory and an Optuna study name
COMBINATIONS_ALL = 256  # up to this many value combinations are all checked; beyond, every pair


class _Loader(UniqueKeyLoader):
    """SafeLoader that also reads ``1e-4`` / ``5E3`` as floats (YAML 1.1 wants ``1.0e-4``) and
    refuses a key given twice in one mapping (ctcae_core.config.UniqueKeyLoader)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# ----------------------------------------------------------------------------- parsing


def load_study(path: str | Path, *, smoke: bool = False) -> Study:
    """Read and validate a study file; raises StudyError naming the file and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise StudyError(f"{path}: cannot read the study file ({e.strerror or e}); give a YAML study file (ablations/*.yaml)") from None
    except UnicodeDecodeError:
        raise StudyError(f"{path}: not a text file (not UTF-8); give a YAML study file (ablations/*.yaml)") from None
    return parse_study(text, source=str(path), smoke=smoke)


def parse_study(text: str, *, source: str = "<study>", smoke: bool = False) -> Study:
    """Validate a study given as YAML text (``source`` names it in errors)."""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise StudyError(f"{source}: not valid YAML ({' '.join(str(e).split())}); fix the syntax") from None
    except ConfigError as e:  # a duplicated key
        raise StudyError(f"{source}: {e}") from None
    return _Parser(source).study(raw, text, smoke)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        # (key, repr(value)) -> the error of that searched value on the base config; it stands
        # unless another searched key makes the value work (``combinations``)
        self.alone_errors: dict[tuple[str, str], StudyError] = {}

    def err(self, key: str, msg: str) -> StudyError:
        return StudyError(f"{self.source}: {key}: {msg}")

    def mapping(self, key: str, d: Any, allowed: tuple[str, ...] | None) -> dict[str, Any]:
        if d is None:
            return {}
        if not isinstance(d, dict):
            raise self.err(key, f"got {type(d).__name__} {d!r}; give a mapping (key: value lines)")
        if allowed is not None:
            unknown = sorted(set(map(str, d)) - set(allowed))
            if unknown:
                raise self.err(key, f"unknown key(s) {unknown}; valid keys: {list(allowed)}")
        return d

    def typed(self, key: str, value: Any, tp: type | tuple[type, ...], what: str) -> Any:
        tps = tp if isinstance(tp, tuple) else (tp,)
        if isinstance(value, bool) and bool not in tps:
            raise self.err(key, f"got {value!r}; give {what}")
        if not isinstance(value, tps):
            raise self.err(key, f"got {type(value).__name__} {value!r}; give {what}")
        return value

    def config_key(self, where: str, key: Any) -> str:
        if not isinstance(key, str):
            raise self.err(where, f"got key {key!r}; config keys are dotted strings such as train.lr")
        try:
            key_type(key)
        except ConfigError as e:
            raise self.err(f"{where}.{key}", str(e)) from None
        return key

    def feasible(self, where: str, cfg: ExperimentConfig) -> None:
        """A config whose data can never work (unknown dataset, batch larger than the train split)
        is refused here, not inside every trial."""
        from ctcae_core.data import DatasetError, check_data

        try:
            check_data(cfg.data, cfg.train.batch_size)
        except DatasetError as e:
            raise self.err(where, str(e)) from None

    def alone(self, where: str, base: ExperimentConfig, key: str, value: Any) -> None:
        """Check one searched value on the base config; an error is kept for ``combinations``."""
        try:
            cfg = self.apply(where, base, {key: value})
            if key in DATA_KEYS:
                self.feasible(where, cfg)
        except StudyError as e:
            self.alone_errors[(key, repr(value))] = e

    def apply(self, where: str, cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
        try:
            return cfg.with_overrides(overrides)
        except ConfigError as e:
            raise self.err(where, str(e)) from None

    # ------------------------------------------------------------------ sections

    def study(self, raw: Any, text: str, smoke: bool) -> Study:
        raw = self.mapping("top level", raw, TOP_LEVEL)
        if not raw:
            raise self.err("top level", f"empty study file; give the sections {list(TOP_LEVEL)} (at least base and space)")
        name = raw.get("name", Path(self.source).stem)
        self.typed("name", name, str, "a string")
        if not STUDY_NAME.fullmatch(name):
            raise self.err("name", f"{name!r} is not a valid name; use letters, digits, '_', '-', '.'")
        description = self.typed("description", raw.get("description", ""), str, "a string")

        profile, overrides = self.base(raw.get("base"))
        data = self.mapping("data", raw.get("data"), None)
        for k, v in data.items():
            overrides[self.config_key("data", f"data.{k}")] = v
        if smoke:
            # Smoke test: the tiny profile, whatever the study's base; only its search space and
            # the object counts to test on survive.
            profile = SMOKE_PROFILE
            overrides = {k: v for k, v in overrides.items() if k == "data.test_n_objects"}
        base = self.apply("base", get_profile(profile), overrides)
        self.feasible("base", base)

        if "space" not in raw:
            raise self.err("space", "missing; map dotted config keys to distributions")
        search = self.search(raw.get("search"))
        params = self.space(raw["space"], base, search.algorithm)
        self.combinations(params, base)
        objective = self.objective(raw.get("objective"))
        scheduler = self.scheduler(raw.get("scheduler"), base, objective, smoke)
        resources = self.resources(raw.get("resources"))

        study = Study(
            name=name,
            path=self.source,
            text=text,
            profile=profile,
            base_overrides=overrides,
            base=base,
            params=params,
            objective=objective,
            search=search,
            scheduler=scheduler,
            resources=resources,
            smoke=smoke,
            description=description,
        )
        if search.algorithm == "grid":
            n = len(study.grid_points())
            asked = raw.get("search", {}).get("num_samples") if isinstance(raw.get("search"), dict) else None
            if asked is not None and search.num_samples > n:
                raise self.err("search.num_samples", f"{search.num_samples} exceeds the {n} grid points; give at most {n}")
            num = search.num_samples if asked is not None else n
            study = replace(study, search=replace(search, num_samples=num))
        if smoke:
            study = replace(study, search=replace(study.search, num_samples=min(study.search.num_samples, SMOKE_MAX_SAMPLES)))
        return study

    def base(self, raw: Any) -> tuple[str, dict[str, Any]]:
        if raw is None:
            raise self.err("base", f"missing; give base.profile, one of {list_profiles()}")
        if isinstance(raw, str):
            raw = {"profile": raw}
        raw = self.mapping("base", raw, ("profile", "overrides"))
        profile = raw.get("profile")
        if profile not in list_profiles():
            raise self.err("base.profile", f"unknown profile {profile!r}; {suggest(str(profile), list_profiles(), 'valid profiles')}")
        overrides: dict[str, Any] = {}
        for k, v in self.mapping("base.overrides", raw.get("overrides"), None).items():
            overrides[self.config_key("base.overrides", k)] = v
        return profile, overrides

    def space(self, raw: Any, base: ExperimentConfig, algorithm: str) -> tuple[Param, ...]:
        raw = self.mapping("space", raw, None)
        if not raw:
            raise self.err("space", "empty; map at least one dotted config key to a distribution")
        params = {}
        for key, spec in raw.items():
            key = self.config_key("space", key)
            params[key] = self.param(key, spec, base, algorithm)
        # conditions on other space parameters: evaluate those first (topological order, file order kept)
        deps = {k: [c.key for c in p.when if c.key in params and c.key != k] for k, p in params.items()}
        for k, p in params.items():
            if any(c.key == k for c in p.when):
                raise self.err(f"space.{k}.when", "conditioned on itself; condition it on another key")
        ordered: list[str] = []
        state: dict[str, int] = {}

        def visit(k: str, chain: list[str]) -> None:
            if state.get(k) == 2:
                return
            if state.get(k) == 1:
                raise self.err(f"space.{k}.when", f"circular conditions: {' -> '.join(chain + [k])}; remove one of them")
            state[k] = 1
            for d in deps[k]:
                visit(d, chain + [k])
            state[k] = 2
            ordered.append(k)

        for k in params:
            visit(k, [])
        return tuple(params[k] for k in ordered)

    def combinations(self, params: tuple[Param, ...], base: ExperimentConfig) -> None:
        """Refuse searched values that are valid alone but never together (``dec_positives: 8`` with
        ``dec_top_k: 4``; a batch size larger than one searched dataset's train split).

        Each parameter stands for its choice / grid values or its two bounds. Every combination
        is tried when there are at most ``COMBINATIONS_ALL`` of them, else every pair of
        parameters; inactive parameters (``when``) keep their base value, as in a trial.
        """
        reps = [p.values if p.kind in ("choice", "grid") else (p.low, p.high) for p in params]
        if math.prod(len(r) for r in reps) <= COMBINATIONS_ALL:
            groups = [tuple(range(len(params)))]
        else:
            groups = list(itertools.combinations(range(len(params)), 2))
        if len(params) < 2:
            groups = []
        searched, seen, works, clash = {p.key for p in params}, set(), set(), None
        for group in groups:
            keys = {params[i].key for i in group}
            if any(c.key in searched and c.key not in keys for i in group for c in params[i].when):
                continue  # its condition hangs on a parameter outside this pair: a pair cannot decide it
            for combo in itertools.product(*(reps[i] for i in group)):
                values, point = base.flat(), {}
                for i, v in zip(group, combo):
                    if params[i].active(values):
                        values[params[i].key] = point[params[i].key] = v
                sig = tuple(sorted((k, repr(v)) for k, v in point.items()))
                if not point or sig in seen:
                    continue
                seen.add(sig)
                try:
                    cfg = base.with_overrides(point)
                    if keys & set(DATA_KEYS):
                        from ctcae_core.data import check_data

                        check_data(cfg.data, cfg.train.batch_size)
                    works |= {(k, repr(v)) for k, v in point.items()}
                except ValueError as e:  # ConfigError, DatasetError
                    clash = clash or (point, e)
        for key, error in self.alone_errors.items():
            if key not in works:  # no searched value of another key makes it work
                raise error
        if clash is not None:
            named = ", ".join(f"{k}={v!r}" for k, v in clash[0].items())
            raise self.err("space", f"{named} cannot work together ({clash[1]}); narrow the values or add a "
                                    f"'when' condition that keeps them apart")

    def param(self, key: str, spec: Any, base: ExperimentConfig, algorithm: str) -> Param:
        where = f"space.{key}"
        spec = self.mapping(where, spec, DISTRIBUTIONS + ("step", "log", "when"))
        kinds = [k for k in DISTRIBUTIONS if k in spec]
        if len(kinds) != 1:
            raise self.err(where, f"got distribution(s) {kinds or 'none'}; give exactly one of {list(DISTRIBUTIONS)}")
        kind = kinds[0]
        tp = key_type(key)
        when = self.conditions(f"{where}.when", spec.get("when"), base)
        if algorithm == "grid" and kind not in ("grid", "choice"):
            raise self.err(where, f"{kind} cannot be enumerated; search.algorithm grid needs grid or choice values")
        if algorithm != "grid" and kind == "grid":
            raise self.err(where, f"grid needs search.algorithm: grid (got {algorithm}); use choice for {algorithm}")
        extra = sorted({"step", "log"} & set(spec))
        if kind in ("choice", "grid"):
            if extra:
                raise self.err(where, f"{extra} not valid with {kind}; remove {extra}")
            values = spec[kind]
            if not isinstance(values, list) or not values:
                raise self.err(f"{where}.{kind}", f"got {values!r}; give a non-empty list of values")
            for v in values:
                if not (v is None or isinstance(v, (str, int, float, bool))):
                    raise self.err(f"{where}.{kind}", f"got {v!r}; give scalar values (Optuna categorical)")
                self.alone(f"{where}.{kind}", base, key, v)
            if len({repr(v) for v in values}) != len(values):
                raise self.err(f"{where}.{kind}", f"duplicate values in {values}; list each value once")
            return Param(key, kind, values=tuple(values), when=when)

        want = int if kind == "int" else float
        if tp is not want:
            raise self.err(where, f"{kind} needs a {want.__name__} field, but {key} is {getattr(tp, '__name__', tp)}; use choice")
        bounds = spec[kind]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise self.err(f"{where}.{kind}", f"got {bounds!r}; give [low, high]")
        num = int if kind == "int" else (int, float)
        what = "an integer" if kind == "int" else "a number"
        low, high = (self.typed(f"{where}.{kind}", b, num, what) for b in bounds)
        if not all(math.isfinite(b) for b in (low, high)):
            raise self.err(f"{where}.{kind}", f"got {bounds}; give finite bounds")
        if not low < high:
            raise self.err(f"{where}.{kind}", f"empty or inverted range [{low}, {high}]; give low < high")
        if kind == "loguniform" and low <= 0:
            raise self.err(f"{where}.{kind}", f"loguniform with low {low}; give low > 0")
        step = spec.get("step")
        log = spec.get("log", False)
        if kind == "loguniform" and "step" in spec:
            raise self.err(f"{where}.step", "not valid with loguniform; remove step")
        if kind != "int" and "log" in spec:
            raise self.err(f"{where}.log", f"only valid with int, not {kind}; use loguniform for floats")
        self.typed(f"{where}.log", log, bool, "true/false")
        if step is not None:
            self.typed(f"{where}.step", step, num, what)
            if step <= 0 or step > high - low:
                raise self.err(f"{where}.step", f"got {step}; give 0 < step <= high - low ({high - low})")
            if log:
                raise self.err(f"{where}.step", "step and log cannot be combined (Optuna); remove one")
        if log and low <= 0:
            raise self.err(f"{where}.{kind}", f"log with low {low}; give low > 0")
        for b in (low, high):
            self.alone(f"{where}.{kind}", base, key, b)
        return Param(key, kind, low=low, high=high, step=step, log=log, when=when)

    def conditions(self, where: str, raw: Any, base: ExperimentConfig) -> tuple[Condition, ...]:
        raw = self.mapping(where, raw, None)
        out = []
        for key, spec in raw.items():
            key = self.config_key(where, key)
            if not isinstance(spec, dict):
                spec = {"eq": spec}
            spec = self.mapping(f"{where}.{key}", spec, CONDITION_OPS)
            if not spec:
                raise self.err(f"{where}.{key}", f"empty condition; give one of the ops {list(CONDITION_OPS)}")
            for op, value in spec.items():
                if op == "in":
                    if not isinstance(value, list) or not value:
                        raise self.err(f"{where}.{key}.in", f"got {value!r}; give a non-empty list")
                    for v in value:
                        self.apply(f"{where}.{key}.in", base, {key: v})
                    value = tuple(value)
                elif op in ("gt", "ge", "lt", "le"):
                    if key_type(key) not in (int, float):
                        raise self.err(f"{where}.{key}.{op}", f"{key} is not numeric; use eq, ne or in")
                    self.typed(f"{where}.{key}.{op}", value, (int, float), "a number")
                    if not math.isfinite(value):
                        raise self.err(f"{where}.{key}.{op}", f"got {value!r}; give a finite number")
                else:
                    self.apply(f"{where}.{key}.{op}", base, {key: value})
                out.append(Condition(key, op, value))
        return tuple(out)

    def objective(self, raw: Any) -> Objective:
        raw = self.mapping("objective", raw, ("metric", "mode", "metrics"))
        if not raw:
            return Objective(("val_ari_fg",), ("max",))
        if "metrics" in raw:
            if "metric" in raw or "mode" in raw:
                raise self.err("objective", "both metric/mode and metrics given; give either metric + mode or metrics")
            items = raw["metrics"]
            if not isinstance(items, list) or not items:
                raise self.err("objective.metrics", f"got {items!r}; give a non-empty list of {{metric, mode}}")
            pairs = [self.metric_mode(f"objective.metrics[{i}]", it) for i, it in enumerate(items)]
        else:
            pairs = [self.metric_mode("objective", raw)]
        metrics = tuple(m for m, _ in pairs)
        if len(set(metrics)) != len(metrics):
            raise self.err("objective.metrics", f"duplicate metrics {list(metrics)}; list each metric once")
        return Objective(metrics, tuple(m for _, m in pairs))

    def metric_mode(self, where: str, raw: Any) -> tuple[str, str]:
        raw = self.mapping(where, raw, ("metric", "mode"))
        metric = raw.get("metric")
        if not isinstance(metric, str) or not reported_metric_pattern().fullmatch(metric):
            raise self.err(f"{where}.metric", f"{metric!r} is not a metric the training reports; use one of {reported_metrics_help()}")
        mode = raw.get("mode")
        if mode not in ("min", "max"):
            raise self.err(f"{where}.mode", f"{mode!r} is not a mode; use 'min' or 'max'")
        return metric, mode

    def search(self, raw: Any) -> SearchSpec:
        raw = self.mapping("search", raw, ("algorithm", "num_samples", "max_concurrent", "seed"))
        algorithm = raw.get("algorithm", "tpe")
        if algorithm not in ALGORITHMS:
            raise self.err("search.algorithm", f"{algorithm!r} is not an algorithm; use one of {list(ALGORITHMS)}")
        num = self.typed("search.num_samples", raw.get("num_samples", 8), int, "an integer")
        conc = self.typed("search.max_concurrent", raw.get("max_concurrent", 1), int, "an integer")
        seed = self.typed("search.seed", raw.get("seed", 0), int, "an integer")
        if num < 1:
            raise self.err("search.num_samples", f"got {num}; give an integer >= 1")
        if conc < 1:
            raise self.err("search.max_concurrent", f"got {conc}; give an integer >= 1")
        return SearchSpec(algorithm, num, conc, seed)

    def scheduler(self, raw: Any, base: ExperimentConfig, objective: Objective, smoke: bool = False) -> SchedulerSpec:
        keys = ("type", "max_t", "grace_period", "reduction_factor", "metric", "mode")
        raw = dict(self.mapping("scheduler", raw, keys))
        if smoke:  # the budget follows the tiny profile's steps
            raw.pop("max_t", None)
            raw.pop("grace_period", None)
        kind = raw.get("type", "none")
        if kind not in SCHEDULERS:
            raise self.err("scheduler.type", f"{kind!r} is not a scheduler; use one of {list(SCHEDULERS)}")
        if kind == "none":
            extra = sorted(set(raw) - {"type"})
            if extra:
                raise self.err("scheduler", f"{extra} given but scheduler.type is none; remove them or set type: asha")
            return SchedulerSpec()
        steps, every = base.train.steps, base.train.eval_every
        max_t = self.typed("scheduler.max_t", raw.get("max_t", steps), int, "an integer (training steps)")
        grace = self.typed(
            "scheduler.grace_period", raw.get("grace_period", max(every, max_t // 8)), int, "an integer (training steps)"
        )
        rf = self.typed("scheduler.reduction_factor", raw.get("reduction_factor", 2), (int, float), "a number")
        if not 0 < max_t <= steps:
            raise self.err("scheduler.max_t", f"got {max_t}; give 0 < max_t <= train.steps ({steps})")
        if not 0 < grace <= max_t:
            raise self.err("scheduler.grace_period", f"got {grace}; give 0 < grace_period <= max_t ({max_t})")
        if grace < every:
            raise self.err("scheduler.grace_period", f"{grace} is below train.eval_every ({every}): no metric to judge by; raise it")
        if rf <= 1:
            raise self.err("scheduler.reduction_factor", f"got {rf}; give a number > 1")
        if "metric" in raw or "mode" in raw:
            metric, mode = self.metric_mode("scheduler", {"metric": raw.get("metric"), "mode": raw.get("mode")})
        elif objective.multi:
            raise self.err("scheduler", "ASHA on a multi-objective study; give scheduler.metric and scheduler.mode")
        else:
            metric, mode = objective.metric, objective.mode
        return SchedulerSpec("asha", max_t, grace, float(rf), metric, mode)

    def resources(self, raw: Any) -> ResourcesSpec:
        raw = self.mapping("resources", raw, ("workers", "cpus_per_worker", "gpus_per_worker", "max_failures", "in_process"))
        d = ResourcesSpec()
        workers = self.typed("resources.workers", raw.get("workers", d.workers), int, "an integer")
        cpus = self.typed("resources.cpus_per_worker", raw.get("cpus_per_worker", d.cpus_per_worker), (int, float), "a number")
        gpus = self.typed("resources.gpus_per_worker", raw.get("gpus_per_worker", d.gpus_per_worker), (int, float), "a number")
        fails = self.typed("resources.max_failures", raw.get("max_failures", d.max_failures), int, "an integer")
        inline = self.typed("resources.in_process", raw.get("in_process", d.in_process), bool, "true or false")
        if workers < 1:
            raise self.err("resources.workers", f"got {workers}; give an integer >= 1")
        if cpus < 0 or gpus < 0 or (cpus == 0 and gpus == 0):
            raise self.err("resources", f"cpus_per_worker {cpus}, gpus_per_worker {gpus}; give both >= 0, not both 0")
        if fails < -1:
            raise self.err("resources.max_failures", f"got {fails}; give an integer >= -1 (-1 = unlimited)")
        if inline and workers != 1:
            raise self.err("resources.in_process", f"true with workers {workers}: a trial trains in its own process "
                           f"with one worker only; set workers: 1 or in_process: false")
        return ResourcesSpec(workers, float(cpus), float(gpus), fails, inline)
