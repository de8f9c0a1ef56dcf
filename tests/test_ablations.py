"""Every study in ablations/ parses and validates through search/space.py, every trial it can
produce resolves to a valid ExperimentConfig, and the paper / generalization / contrastive studies
ask the questions they say they ask."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import optuna
import pyarrow as pa
import pytest

from ctcae_core.data import parse_n_objects
from search.reporting.tables import variant_name
from search.space import load_study
from search.study import Study

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = sorted((ROOT / "ablations").glob("*.yaml"))
MINE = ("paper", "paper_small", "paper_half", "generalization", "generalization_small", "generalization_tetrominoes_small", "contrastive", "contrastive_small")
SPEC = re.compile(r"(?P<name>[a-z_]+)(?::(?P<lo>\d+)-(?P<hi>\d+))?$")
DEFAULT_RANGE = {"tetrominoes": (3, 3), "multi_dsprites": (2, 5), "clevr_like": (3, 6)}


def trials(study: Study, n_random: int = 25) -> list[dict]:
    """All grid points, or random draws from the define-by-run space (what the searcher proposes)."""
    if study.search.algorithm == "grid":
        return study.grid_points()
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n_random):
        t = s.ask()
        out.append(study.sample(t))
        s.tell(t, 0.0)
    return out


@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_study_validates_and_every_trial_resolves(path: Path) -> None:
    study = load_study(path)
    assert study.name == path.stem
    for point in trials(study):
        cfg = study.resolve(point)  # raises ConfigError on an impossible combination
        for k, v in point.items():
            if not k.startswith("_"):
                assert cfg.flat()[k] == (list(v) if isinstance(v, tuple) else v)
    smoke = load_study(path, smoke=True)  # --smoke-test works on every study
    assert smoke.profile == "tiny" and smoke.search.num_samples <= 4


@pytest.mark.parametrize("stem", MINE)
def test_header_says_question_and_time(stem: str) -> None:
    text = (ROOT / "ablations" / f"{stem}.yaml").read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    head = "\n".join(header)
    assert len(header) >= 5 and "Question:" in head and "Time:" in head
    assert "CPU" in head and "GPU" in head and f"ablations/{stem}.yaml" in head


def test_every_study_has_a_small_budget() -> None:
    for stem in ("paper", "generalization", "contrastive"):
        full, small = load_study(ROOT / "ablations" / f"{stem}.yaml"), load_study(ROOT / "ablations" / f"{stem}_small.yaml")
        assert small.resources.gpus_per_worker == 0 and small.search.max_concurrent <= 2  # fits the 2-core CPU
        assert small.base.train.steps <= 3000 and small.base.model.enc_channels[0] <= 32
        assert full.base.model.enc_channels == (128, 128, 256, 256, 256) and full.base.train.steps == 50000  # the paper's


def _variants_by_dataset(study: Study) -> dict[str, dict[str, set[int]]]:
    """dataset -> variant name (CAE / CAE++ / CtCAE) -> seeds."""
    out: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for point in study.grid_points():
        cfg = study.resolve(point)
        flat = {k: str(v) for k, v in cfg.flat().items()}
        name = variant_name(flat)
        assert name, f"{point} is none of CAE / CAE++ / CtCAE"
        out[cfg.data.dataset][name].add(cfg.train.seed)
    return out


def test_paper_is_three_variants_by_five_seeds_on_three_datasets() -> None:
    by_ds = _variants_by_dataset(load_study(ROOT / "ablations" / "paper.yaml"))
    assert set(by_ds) == {"tetrominoes", "multi_dsprites", "clevr_like"}
    for ds, variants in by_ds.items():
        assert set(variants) == {"CAE", "CAE++", "CtCAE"}, ds
        assert all(len(seeds) >= 5 for seeds in variants.values()), (ds, variants)
    study = load_study(ROOT / "ablations" / "paper.yaml")
    assert len(study.grid_points()) == 45 and study.search.num_samples == 45


def test_paper_small_is_three_variants_by_three_seeds_on_tetrominoes() -> None:
    by_ds = _variants_by_dataset(load_study(ROOT / "ablations" / "paper_small.yaml"))
    assert set(by_ds) == {"tetrominoes"}
    assert set(by_ds["tetrominoes"]) == {"CAE", "CAE++", "CtCAE"}
    assert all(len(s) >= 3 for s in by_ds["tetrominoes"].values())


def test_paper_half_is_caepp_against_ctcae_by_three_seeds_at_half_width() -> None:
    study = load_study(ROOT / "ablations" / "paper_half.yaml")
    by_ds = _variants_by_dataset(study)
    assert set(by_ds) == {"tetrominoes"} and set(by_ds["tetrominoes"]) == {"CAE++", "CtCAE"}
    assert all(s == {0, 1, 2} for s in by_ds["tetrominoes"].values())
    assert study.base.model.enc_channels == (64, 64, 128, 128, 128) and study.base.model.linear_dim == 128


def _trained_on(filter_text: str, counts: range) -> set[int]:
    expr = parse_n_objects(filter_text)
    table = pa.table({"n_objects": pa.array(list(counts), pa.int64())})
    return set(table.filter(expr).column("n_objects").to_pylist()) if expr is not None else set(counts)


@pytest.mark.parametrize("stem, expected", [
    ("generalization", {"multi_dsprites", "clevr_like"}),
    ("generalization_small", {"multi_dsprites", "clevr_like"}),
    ("generalization_tetrominoes_small", {"tetrominoes"}),
])
def test_generalization_trains_on_at_most_4_and_tests_5_and_6(stem: str, expected: set[str]) -> None:
    study = load_study(ROOT / "ablations" / f"{stem}.yaml")
    datasets = set()
    for point in study.grid_points():
        cfg = study.resolve(point)
        assert _trained_on(cfg.data.train_n_objects, range(1, 11)) == {1, 2, 3, 4}
        assert {5, 6} <= set(cfg.data.test_n_objects) and {1, 2, 3, 4} <= set(cfg.data.test_n_objects)
        m = SPEC.match(cfg.data.dataset)
        assert m, cfg.data.dataset
        lo, hi = (int(m["lo"]), int(m["hi"])) if m["lo"] else DEFAULT_RANGE[m["name"]]
        assert lo <= 4 and hi >= 6, f"{cfg.data.dataset}: generated scenes must include 6 objects"
        datasets.add(m["name"])
    assert datasets == expected
    names = {variant_name({k: str(v) for k, v in study.resolve(p).flat().items()}) for p in study.grid_points()}
    assert {"CAE++", "CtCAE"} <= names


@pytest.mark.parametrize("stem", ["contrastive", "contrastive_small"])
def test_contrastive_is_tpe_with_asha_over_the_loss(stem: str) -> None:
    study = load_study(ROOT / "ablations" / f"{stem}.yaml")
    assert study.search.algorithm == "tpe" and study.scheduler.type == "asha"
    assert study.scheduler.max_t == study.base.train.steps
    keys = set(study.keys)
    assert {"contrastive.temperature", "contrastive.weight", "contrastive.layers"} <= keys
    for side in ("enc", "dec"):
        assert {f"contrastive.{side}_anchors", f"contrastive.{side}_top_k", f"contrastive.{side}_bottom_m"} <= keys
    # encoder parameters are sampled only when the encoder takes part, and likewise the decoder's
    layers_seen = defaultdict(set)
    for point in trials(study, 40):
        layers = point["contrastive.layers"]
        layers_seen[layers] |= {k.split(".")[1].split("_")[0] for k in point if k.startswith("contrastive.") and k[12:15] in ("enc", "dec")}
        assert study.resolve(point).contrastive.weight > 0
    assert layers_seen["encoder"] == {"enc"} and layers_seen["decoder"] == {"dec"} and layers_seen["both"] == {"enc", "dec"}
