"""What a study shows in the MLflow UI (search/runview.py, search/pictures.py): trial names, search
tags, params without inactive keys, provenance, links, and the pictures of chosen evaluations."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from pyarrow import fs as pafs
from PIL import Image

from ctcae_core.config import get_profile
from ctcae_core.train import fit
from search import runview
from search.names import KEY_PARAMS
from search.pictures import PICTURES_DIR, EvalPictures, picture_steps, read_pictures
from search.space import load_study

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_study(ROOT / "ablations" / "smoke.yaml", smoke=True)
ON = {"model.decoder": "upsample", "model.out_sigmoid": False, "contrastive.weight": 1e-4, "contrastive.temperature": 0.0712}
OFF = {"model.decoder": "transpose", "model.out_sigmoid": True, "contrastive.weight": 0.0}


def test_trial_run_name_is_the_searched_values_and_the_seed() -> None:
    assert runview.trial_run_name(SMOKE, ON, SMOKE.resolve(ON)) == "decoder=upsample sigmoid=0 w=1e-4 T=0.0712 seed=0"
    # the temperature is inactive without the loss: not in the name
    assert runview.trial_run_name(SMOKE, OFF, SMOKE.resolve(OFF)) == "decoder=transpose sigmoid=1 w=0 seed=0"
    seeded = {**OFF, "train.seed": 3}
    assert runview.trial_run_name(SMOKE, seeded, SMOKE.resolve(seeded)).endswith(" seed=3")


@pytest.mark.parametrize("value, text", [(1e-4, "1e-4"), (4e-4, "4e-4"), (0.07, "0.07"), (0.0523, "0.0523"),
                                         (0.0, "0"), (1.5e-5, "1.5e-5"), (2e5, "2e5"), (True, "1"), (12, "12"),
                                         ((3, 4), "3,4"), ("upsample", "upsample")])
def test_short_values(value, text) -> None:
    assert runview.short_value(value) == text


def test_short_keys_fall_back_to_the_full_key_on_a_clash() -> None:
    labels = runview.short_keys(["model.lr", "train.lr", "model.decoder", "contrastive.temperature"])
    assert labels == {"model.lr": "model.lr", "train.lr": "train.lr", "model.decoder": "decoder", "contrastive.temperature": "T"}


def test_unique_name_within_a_study() -> None:
    assert runview.unique_name("a=1 seed=0", []) == "a=1 seed=0"
    assert runview.unique_name("a=1 seed=0", ["a=1 seed=0"]) == "a=1 seed=0 #2"
    assert runview.unique_name("a=1 seed=0", ["a=1 seed=0", "a=1 seed=0 #2"]) == "a=1 seed=0 #3"


def test_search_tags_hold_the_full_assignment() -> None:
    tags = runview.search_tags(SMOKE, ON, SMOKE.resolve(ON))
    assert tags == {"search.decoder": "upsample", "search.sigmoid": "False", "search.w": "0.0001",
                    "search.T": "0.0712", "search.seed": "0"}
    assert "search.T" not in runview.search_tags(SMOKE, OFF, SMOKE.resolve(OFF))


def test_params_are_the_active_searched_and_key_values() -> None:
    on = runview.trial_params(SMOKE, ON, SMOKE.resolve(ON))
    assert set(on) == set(KEY_PARAMS) | {"contrastive.temperature"} and on["contrastive.temperature"] == 0.0712
    off = runview.trial_params(SMOKE, OFF, SMOKE.resolve(OFF))
    assert set(off) == set(KEY_PARAMS) and off["contrastive.weight"] == 0.0  # no temperature: it has no effect
    assert len(off) < len(SMOKE.resolve(OFF).flat()) / 2
    # a searched contrastive setting without a condition is still inactive when the loss is off
    study = SimpleNamespace(keys=["contrastive.dec_anchors"])
    cfg = get_profile("tiny").with_overrides(["contrastive.weight=0"])
    assert "contrastive.dec_anchors" not in runview.trial_params(study, {"contrastive.dec_anchors": 8}, cfg)


def test_provenance_tags() -> None:
    tags = runview.provenance_tags("a" * 40)
    assert tags["mlflow.source.name"] == "search/run.py" and tags["mlflow.source.git.commit"] == "a" * 40
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"


def test_links_open_the_trials_in_the_model_training_view() -> None:
    assert runview.ui_base("http://u:secret@host:5000/") == ("http://u:***@host:5000", True)
    assert runview.ui_base("sqlite:////tmp/x.db") == (runview.DEFAULT_UI, False)
    url = runview.runs_url("http://127.0.0.1:5000", "7", "val_ari_fg", "max")
    path, query = url.split("?", 1)
    assert path == "http://127.0.0.1:5000/#/experiments/7/runs"
    q = {k: v[0] for k, v in parse_qs(query).items()}
    assert q == {"workflowType": "machine_learning", "searchFilter": "tags.`ctcae.kind` = 'trial'",
                 "orderByKey": "metrics.`val_ari_fg`", "orderByAsc": "false"}
    compare = runview.compare_url("http://h:1", "7", ["r1", "r2"])
    frag = urlsplit(compare).fragment
    assert frag.startswith("/compare-runs?")
    q = parse_qs(frag.split("?", 1)[1])
    assert json.loads(unquote(q["runs"][0])) == ["r1", "r2"] and json.loads(q["experiments"][0]) == ["7"]


def test_picture_steps_are_bounded() -> None:
    assert picture_steps(20, 10) == {10, 20}
    assert picture_steps(25, 10) == {10, 20, 25}
    many = picture_steps(10_000, 100, limit=8)
    assert len(many) == 8 and {100, 10_000} <= many and many <= set(range(100, 10_001, 100))


@pytest.mark.slow  # trains a tiny model: ~10 s on a quiet machine, a minute on a busy one
def test_eval_pictures_travel_in_the_checkpoint(tmp_path: Path) -> None:
    """fit's report callback with EvalPictures: pictures at the chosen steps only, read back as
    (key, step, PNG) the way the driver reads a reported checkpoint."""
    cfg = get_profile("tiny").with_overrides([f"data.cache_dir={tmp_path / 'data'}", "data.n_train=200", "data.n_test=16",
                                              "train.steps=3", "train.eval_every=1", "train.eval_images=8"])
    pictures = EvalPictures(cfg)
    pictures.steps = frozenset({1, 3})
    seen = []

    def report(metrics, checkpoint_dir):
        pictures(int(metrics["step"]), checkpoint_dir)
        ckpt = SimpleNamespace(path=str(checkpoint_dir), filesystem=pafs.LocalFileSystem())
        seen.append((metrics["step"], read_pictures(ckpt)))

    fit(cfg, report=report, out_dir=tmp_path / "run", progress=False)
    assert [(s, [(k, st) for k, st, _ in p]) for s, p in seen] == [
        (1, [("panel", 1), ("phase_maps", 1), ("segmentation", 1)]),
        (2, []),  # not a picture step: the directory holds no stale pictures either
        (3, [("panel", 3), ("phase_maps", 3), ("segmentation", 3)]),
    ]
    assert not (tmp_path / "run" / "report_checkpoint" / PICTURES_DIR / "panel_step1.png").exists()
    import io

    with Image.open(io.BytesIO(seen[2][1][0][2])) as im:
        assert im.format == "PNG" and im.height == 5 * (32 * 4 + 2) + 2  # five rows of 8 val images at 32 px x4
