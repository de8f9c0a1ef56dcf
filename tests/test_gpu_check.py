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
    assert "training ctcae_tetrominoes" in res.stderr


def test_gpu_check_refuses_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        return
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cuda"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no CUDA device" in res.stderr and "Traceback" not in res.stderr
