"""The study-file parser (search/space.py): every distribution, conditions, and every bad input.

Validation happens before Ray starts, so these tests need no Ray: a real Optuna study (in memory)
drives the define-by-run space.
"""
from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from ctcae_core.config import get_profile, valid_keys
from search.space import StudyError, load_study, parse_study

ROOT = Path(__file__).resolve().parents[1]

FULL = """
name: full
base:
  profile: tiny
  overrides:
    train.steps: 40
data:
  train_n_objects: "<=4"
  test_n_objects: [5, 6]
space:
  model.decoder: {choice: [upsample, transpose]}
  train.lr: {loguniform: [1e-4, 1e-3]}
  contrastive.weight: {choice: [0.0, 1e-4]}
  contrastive.temperature:
    uniform: [0.02, 0.2]
    step: 0.01
    when: {contrastive.weight: {gt: 0}}
  contrastive.dec_anchors:
    int: [10, 40]
    step: 10
    when: {contrastive.weight: {gt: 0}, model.decoder: upsample}
  model.linear_dim: {int: [8, 64], log: true}
objective:
  metrics: [{metric: val_ari_fg, mode: max}, {metric: val_mse, mode: min}]
search: {algorithm: tpe, num_samples: 30, max_concurrent: 2, seed: 3}
scheduler: {type: asha, max_t: 40, grace_period: 10, reduction_factor: 3, metric: val_ari_fg, mode: max}
resources: {workers: 2, cpus_per_worker: 1, gpus_per_worker: 0, max_failures: 1}
"""


def test_full_schema_parsed_into_typed_study() -> None:
    s = parse_study(FULL, source="full.yaml")
    assert s.name == "full" and s.profile == "tiny"
    assert s.base.train.steps == 40 and s.base.data.train_n_objects == "<=4" and s.base.data.test_n_objects == (5, 6)
    kinds = {p.key: p.kind for p in s.params}
    assert kinds == {
        "model.decoder": "choice", "train.lr": "loguniform", "contrastive.weight": "choice",
        "contrastive.temperature": "uniform", "contrastive.dec_anchors": "int", "model.linear_dim": "int",
    }
    lr = next(p for p in s.params if p.key == "train.lr")
    assert (lr.low, lr.high) == (1e-4, 1e-3)  # `1e-4` is a float here, not YAML 1.1's string
    # conditioned parameters come after what they depend on
    order = s.keys
    assert order.index("contrastive.weight") < order.index("contrastive.temperature")
    assert order.index("model.decoder") < order.index("contrastive.dec_anchors")
    assert s.objective.metrics == ("val_ari_fg", "val_mse") and s.objective.modes == ("max", "min") and s.objective.multi
    assert (s.search.algorithm, s.search.num_samples, s.search.max_concurrent, s.search.seed) == ("tpe", 30, 2, 3)
    assert (s.scheduler.type, s.scheduler.max_t, s.scheduler.grace_period, s.scheduler.reduction_factor) == ("asha", 40, 10, 3.0)
    assert (s.resources.workers, s.resources.cpus_per_worker, s.resources.max_failures) == (2, 1.0, 1)
    assert s.resources.in_process is False  # the default: a Ray Train worker group per trial
    assert s.resources.per_worker() == {"CPU": 1.0}  # no GPU key where it has none


def test_tpe_samples_respect_ranges_steps_and_conditions() -> None:
    s = parse_study(FULL, source="full.yaml")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=0))
    seen_weights = set()
    for _ in range(30):
        trial = study.ask()
        values = s.sample(trial)
        cfg = s.resolve(values)  # every sample is a valid ExperimentConfig
        seen_weights.add(values["contrastive.weight"])
        assert values["model.decoder"] in ("upsample", "transpose")
        assert 1e-4 <= values["train.lr"] <= 1e-3 and cfg.train.lr == values["train.lr"]
        assert 8 <= values["model.linear_dim"] <= 64 and isinstance(values["model.linear_dim"], int)
        if values["contrastive.weight"] > 0:
            t = values["contrastive.temperature"]
            assert 0.02 <= t <= 0.2 and math.isclose(round(t / 0.01) * 0.01, t, abs_tol=1e-9)
        else:
            assert "contrastive.temperature" not in values
            assert cfg.contrastive.temperature == get_profile("tiny").contrastive.temperature  # base value kept
        anchors_active = values["contrastive.weight"] > 0 and values["model.decoder"] == "upsample"
        assert ("contrastive.dec_anchors" in values) == anchors_active
        if anchors_active:
            assert values["contrastive.dec_anchors"] in (10, 20, 30, 40)
        study.tell(trial, [0.5, 0.1])
    assert seen_weights == {0.0, 1e-4}


GRID = """
base: {profile: tiny}
space:
  model.out_sigmoid: {grid: [false, true]}
  contrastive.weight: {grid: [0.0, 1e-4]}
  contrastive.temperature:
    grid: [0.05, 0.1]
    when: {contrastive.weight: {gt: 0}}
  train.seed: {choice: [0, 1]}
search: {algorithm: grid, seed: 1}
"""


def test_grid_points_drop_inactive_duplicates_and_optuna_grid_visits_each_once() -> None:
    s = parse_study(GRID, source="grid.yaml")
    points = s.grid_points()
    # 2 sigmoid x (weight 0 | weight 1e-4 x 2 temperatures) x 2 seeds = 2 * 3 * 2
    assert len(points) == 12 and s.search.num_samples == 12
    assert {tuple(sorted(p)) for p in points if p["contrastive.weight"] == 0} == {
        ("contrastive.weight", "model.out_sigmoid", "train.seed")
    }
    study = optuna.create_study(sampler=s.optuna_sampler())
    got = []
    for _ in range(12):
        trial = study.ask()
        got.append(s.sample(trial))
        study.tell(trial, 0.0)
    key = lambda p: tuple(sorted((k, str(v)) for k, v in p.items()))  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, points))


def test_study_files_in_repo_validate() -> None:
    arch = load_study(ROOT / "ablations" / "arch.yaml")
    assert arch.profile == "ctcae_tetrominoes_small" and arch.search.algorithm == "grid"
    assert set(arch.keys) == {"model.out_sigmoid", "model.out_conv", "model.decoder", "contrastive.weight", "train.seed"}
    assert len(arch.grid_points()) == 2 * 2 * 2 * 2 * 3 == arch.search.num_samples
    assert {p["contrastive.weight"] for p in arch.grid_points()} == {0.0, 1e-4}
    smoke = load_study(ROOT / "ablations" / "smoke.yaml")
    assert smoke.profile == "tiny" and 3 <= smoke.search.num_samples <= 4
    # --smoke-test: tiny profile whatever the base, at most 4 trials, scheduler budget from tiny
    arch_smoke = load_study(ROOT / "ablations" / "arch.yaml", smoke=True)
    assert arch_smoke.profile == "tiny" and arch_smoke.search.num_samples == 4
    assert arch_smoke.base.model == get_profile("tiny").model


BASE = "base: {profile: tiny}\n"


@pytest.mark.parametrize(
    "text, where, hint",
    [
        ("", "top level", "empty study file"),
        ("base: {profile: tiny}\nspace: {model.decoder: {choice: [upsample]}}\nbogus: 1\n", "top level", "bogus"),
        ("space: {model.decoder: {choice: [upsample]}}\n", "base", "missing"),
        ("base: {profile: nope}\nspace: {model.decoder: {choice: [upsample]}}\n", "base.profile", "ctcae_tetrominoes_small"),
        ("base: {profile: tiny, overrides: {train.stepz: 3}}\nspace: {model.decoder: {choice: [upsample]}}\n",
         "base.overrides.train.stepz", "train.steps"),
        ("base: {profile: tiny, overrides: {train.steps: many}}\nspace: {model.decoder: {choice: [upsample]}}\n",
         "base", "train.steps"),
        (BASE + "data: {resolutionn: 32}\nspace: {model.decoder: {choice: [upsample]}}\n", "data.data.resolutionn", "data.resolution"),
        (BASE, "space", "missing"),
        (BASE + "space: {}\n", "space", "empty"),
        (BASE + "space: {model.decoderr: {choice: [upsample]}}\n", "space.model.decoderr", "model.decoder"),
        (BASE + "space: {model: {choice: [upsample]}}\n", "space.model", "valid keys"),
        (BASE + "space: {model.decoder: {choice: [upsample, sideways]}}\n", "space.model.decoder.choice", "transpose"),
        (BASE + "space: {model.decoder: {choice: []}}\n", "space.model.decoder.choice", "non-empty"),
        (BASE + "space: {model.decoder: {choice: [upsample, upsample]}}\n", "space.model.decoder.choice", "duplicate"),
        (BASE + "space: {model.decoder: {normal: [0, 1]}}\n", "space.model.decoder", "valid keys"),
        (BASE + "space: {train.lr: {uniform: [1e-3, 1e-3]}}\n", "space.train.lr.uniform", "empty or inverted"),
        (BASE + "space: {train.lr: {uniform: [1e-2, 1e-3]}}\n", "space.train.lr.uniform", "empty or inverted"),
        (BASE + "space: {train.lr: {loguniform: [0, 1e-3]}}\n", "space.train.lr.loguniform", "low > 0"),
        (BASE + "space: {train.lr: {uniform: [1e-4]}}\n", "space.train.lr.uniform", "[low, high]"),
        (BASE + "space: {train.lr: {uniform: [a, b]}}\n", "space.train.lr.uniform", "a number"),
        (BASE + "space: {train.lr: {int: [1, 5]}}\n", "space.train.lr", "int field"),
        (BASE + "space: {train.steps: {uniform: [1, 5]}}\n", "space.train.steps", "float field"),
        (BASE + "space: {train.steps: {int: [10, 5]}}\n", "space.train.steps.int", "empty or inverted"),
        (BASE + "space: {train.steps: {int: [1.5, 5]}}\n", "space.train.steps.int", "an integer"),
        (BASE + "space: {train.steps: {int: [1, 50], step: 0}}\n", "space.train.steps.step", "0 < step"),
        (BASE + "space: {train.steps: {int: [1, 50], step: 5, log: true}}\n", "space.train.steps.step", "cannot be combined"),
        (BASE + "space: {contrastive.temperature: {uniform: [-0.1, 0.2]}}\n", "space.contrastive.temperature.uniform", "> 0"),
        (BASE + "space: {model.out_conv: {choice: [true, 3]}}\n", "space.model.out_conv.choice", "true/false"),
        (BASE + "space: {model.decoder: {choice: [upsample], uniform: [0, 1]}}\n", "space.model.decoder", "exactly one"),
        (BASE + "space: {model.decoder: {grid: [upsample, transpose]}}\n", "space.model.decoder", "search.algorithm: grid"),
        (BASE + "space: {train.lr: {uniform: [1e-4, 1e-3]}}\nsearch: {algorithm: grid}\n", "space.train.lr", "cannot be enumerated"),
        (BASE + "space: {contrastive.temperature: {uniform: [0.01, 0.1], when: {contrastive.weightt: {gt: 0}}}}\n",
         "space.contrastive.temperature.when.contrastive.weightt", "contrastive.weight"),
        (BASE + "space: {contrastive.temperature: {uniform: [0.01, 0.1], when: {contrastive.weight: {above: 0}}}}\n",
         "space.contrastive.temperature.when.contrastive.weight", "'gt'"),
        (BASE + "space: {contrastive.temperature: {uniform: [0.01, 0.1], when: {model.decoder: {gt: 0}}}}\n",
         "space.contrastive.temperature.when.model.decoder.gt", "numeric"),
        (BASE + "space:\n  model.decoder: {choice: [upsample], when: {model.out_conv: true}}\n"
         "  model.out_conv: {choice: [true], when: {model.decoder: upsample}}\n", "when", "circular"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nobjective: {metric: val_ari_fg, mode: up}\n", "objective.mode", "'max'"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nobjective: {metric: 3, mode: max}\n", "objective.metric", "val_ari_fg"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nobjective: {metric: val_ari, mode: max}\n", "objective.metric",
         "not a metric the training reports"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nobjective: {metrics: []}\n", "objective.metrics", "non-empty"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nsearch: {algorithm: bayes}\n", "search.algorithm", "'tpe'"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nsearch: {num_samples: 0}\n", "search.num_samples", ">= 1"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nsearch: {num_samples: '4'}\n", "search.num_samples", "an integer"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nsearch: {max_concurrent: 0}\n", "search.max_concurrent", ">= 1"),
        (BASE + "space: {model.decoder: {grid: [upsample]}}\nsearch: {algorithm: grid, num_samples: 2}\n",
         "search.num_samples", "exceeds the 1 grid points"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nscheduler: {type: hyperband}\n", "scheduler.type", "'asha'"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nscheduler: {type: asha, max_t: 500}\n", "scheduler.max_t", "train.steps (20)"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nscheduler: {type: asha, grace_period: 5}\n",
         "scheduler.grace_period", "eval_every"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nscheduler: {type: asha, reduction_factor: 1}\n",
         "scheduler.reduction_factor", "> 1"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nscheduler: {type: none, max_t: 10}\n", "scheduler", "type is none"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nobjective: {metrics: [{metric: val_ari_fg, mode: max}, {metric: val_mse, mode: min}]}\n"
         "scheduler: {type: asha}\n", "scheduler", "multi-objective"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nresources: {workers: 0}\n", "resources.workers", ">= 1"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nresources: {gpus: 1}\n", "resources", "gpus_per_worker"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nresources: {cpus_per_worker: 0}\n", "resources", "not both 0"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nresources: {workers: 2, in_process: true}\n",
         "resources.in_process", "workers: 1"),
        (BASE + "space: {model.decoder: {choice: [upsample]}}\nresources: {in_process: yes please}\n",
         "resources.in_process", "true or false"),
        ("base: [tiny\n", "not valid YAML", ""),
    ],
)
def test_bad_study_files_name_file_key_and_choices(text: str, where: str, hint: str) -> None:
    with pytest.raises(StudyError) as e:
        parse_study(text, source="bad_study.yaml")
    msg = str(e.value)
    assert msg.startswith("bad_study.yaml: "), msg
    assert where in msg, msg
    assert hint in msg, msg


def test_unknown_key_error_suggests_or_lists_the_valid_keys() -> None:
    with pytest.raises(StudyError) as e:
        parse_study(BASE + "space: {model.decoderr: {choice: [upsample]}}\n", source="s.yaml")
    assert "did you mean 'model.decoder'?" in str(e.value)
    with pytest.raises(StudyError) as e:  # nothing close: the keys of that section
        parse_study(BASE + "space: {model.zzz: {choice: [upsample]}}\n", source="s.yaml")
    assert all(k.split(".")[1] in str(e.value) for k in valid_keys() if k.startswith("model."))


def test_missing_file_is_a_study_error(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="cannot read"):
        load_study(tmp_path / "nope.yaml")


def test_cli_validates_before_ray(tmp_path: Path) -> None:
    """search/run.py rejects a bad file with exit code 2 and the message, without starting Ray."""
    import subprocess
    import sys
    import time

    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "space: {model.decoder: {choice: [sideways]}}\n")
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, str(ROOT / "search" / "run.py"), "--space", str(bad)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert "bad.yaml: space.model.decoder.choice" in p.stderr and "'upsample'" in p.stderr
    assert "Ray" not in p.stdout and not (tmp_path / "ray_results").exists()
    assert time.time() - t0 < 60


def test_trial_env_makes_a_relative_data_cache_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray workers run in their own folders: a relative cache would make each trial generate its data again."""
    import os

    from search.run import trial_env

    monkeypatch.chdir(tmp_path)
    env = trial_env({"CTCAE_DATA_CACHE": ".cache/data", "PYTHONPATH": "/extra", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"})
    assert env["CTCAE_DATA_CACHE"] == str(Path.cwd() / ".cache" / "data")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/extra"]
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "2"
    assert env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == "300"
    assert "CTCAE_DATA_CACHE" not in trial_env({})
    assert trial_env({"CTCAE_DATA_CACHE": "/abs/cache"})["CTCAE_DATA_CACHE"] == "/abs/cache"
