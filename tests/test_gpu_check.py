"""benchmarks/gpu_check.py runs end to end at --dry-run sizes on the CPU (the GPU run is by hand)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # trains in a fresh interpreter
def test_gpu_check_dry_run_prints_one_strict_json_line(tmp_path):
    env = dict(os.environ, CTCAE_DATA_CACHE=os.environ.get("CTCAE_DATA_CACHE", str(tmp_path / "data")))
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    line = res.stdout.strip().splitlines()[-1]
    out = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # no NaN/Infinity
    assert out["device"] == "cpu" and out["dry_run"] is True
    assert set(out["steps"]) == {"cae", "caepp", "ctcae"}
    for fig in out["steps"].values():
        assert 0 < fig["step_s"] < 60 and fig["peak_rss_mb"] > 0
    train = out["train"]
    assert train["steps"] == 3  # the first evaluation past a zero budget
    assert -1 <= train["test_ari_fg"] <= 1 and 0 < train["test_mse"] < 1
    assert -1 <= train["val_ari_fg_colour"] <= 1  # the colour-alone control beside ARI-FG
    assert "training ctcae_tetrominoes" in res.stderr


def test_gpu_check_refuses_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        return
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cuda"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no CUDA device" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow  # starts three training processes
def test_pack_dry_run_gives_one_row_per_pack_size(tmp_path):
    env = dict(os.environ, CTCAE_DATA_CACHE=os.environ.get("CTCAE_DATA_CACHE", str(tmp_path / "data")))
    res = subprocess.run([sys.executable, "benchmarks/pack.py", "--dry-run", "--device", "cpu", "--packs", "1", "2",
                          "--trial-steps", "100"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(ln) for ln in res.stdout.strip().splitlines()]
    out = lines[-1]
    assert out["device"] == "cpu" and out["dry_run"] is True and out["trial_steps"] == 100
    assert [row["pack"] for row in out["packs"]] == [1, 2] and lines[:2] == [{"profile": out["profile"], **r} for r in out["packs"]]
    for row in out["packs"]:
        assert len(row["steps"]) == row["pack"] and min(row["steps"]) >= 1
        assert row["aggregate_steps_per_s"] == pytest.approx(row["per_trial_steps_per_s"] * row["pack"], rel=1e-3)
        assert row["slowest_trial_steps_per_s"] <= row["per_trial_steps_per_s"] + 1e-3
        assert row["trials_per_gpu_hour"] == pytest.approx(row["aggregate_steps_per_s"] * 36, rel=1e-3)  # 3600 / 100
        assert "gpu_mb_per_trial" not in row  # no nvidia-smi reading off a GPU
    one, two = out["packs"]
    assert one["speedup"] == 1.0 and two["speedup"] == pytest.approx(two["aggregate_steps_per_s"] / one["aggregate_steps_per_s"], rel=1e-2)


def test_pack_refuses_an_empty_pack():
    res = subprocess.run([sys.executable, "benchmarks/pack.py", "--dry-run", "--device", "cpu", "--packs", "2", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--packs" in res.stderr and ">= 1" in res.stderr and "Traceback" not in res.stderr


def test_gpu_figures_stops_at_a_failed_smoke_run(tmp_path):
    """Without CUDA the smoke run fails in seconds, and nothing after it spends the budget."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(["bash", "benchmarks/gpu_figures.sh", str(tmp_path / "out"), "1", "200"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1, res.stdout[-2000:]
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "no CUDA device" in log and "== smoke: exit 2" in log
    assert "== gpu_check" not in log and "== pack_paper" not in log
    assert (tmp_path / "out" / "results.jsonl").read_text() == ""
    assert (tmp_path / "out" / "env.txt").is_file()


def test_gpu_curves_refuses_no_runs_and_unknown_runs(tmp_path):
    """scripts/gpu_curves.sh: no run named is a usage error; an unknown run fails with curves.py's
    message in the log, and no curves.tgz pretends to hold results."""
    env = dict(os.environ, PYTHON=sys.executable, CTCAE_CURVES_DIR=str(tmp_path / "runs"))
    res = subprocess.run(["bash", "scripts/gpu_curves.sh", str(tmp_path / "a"), "1000", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2 and "name at least one run" in res.stderr
    res = subprocess.run(["bash", "scripts/gpu_curves.sh", str(tmp_path / "b"), "1000", "1", "no_such_run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=env)
    log = (tmp_path / "b" / "log.txt").read_text()
    assert res.returncode == 2, log[-2000:]
    assert "unknown run(s) ['no_such_run']" in log and "exit 2" in log
    assert not (tmp_path / "b" / "curves.tgz").exists()
