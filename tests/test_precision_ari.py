"""benchmarks/precision_ari.py: fp32 against the bf16 forward of one trained checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctcae_core.config import get_profile
from ctcae_core.train import fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # trains 20 steps, evaluates twice in a child process
def test_bf16_forward_keeps_the_metrics_of_a_trained_checkpoint(tmp_path):
    cfg = get_profile("tiny").with_overrides(
        [f"data.cache_dir={tmp_path / 'data'}", "data.n_train=300", "data.n_test=32", "train.steps=20",
         "train.eval_every=20", "train.lr=2e-3", "model.phase_bias_init=3.14159"])
    fit(cfg, out_dir=tmp_path / "run", progress=False)
    res = subprocess.run([sys.executable, "benchmarks/precision_ari.py", "--checkpoint", str(tmp_path / "run" / "checkpoint_last.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["precision"] == "bf16" and line["images"] == 32
    for k in ("ari_fg", "ari_full", "mse", "phase_spread"):
        assert line["abs_diff"][k] == pytest.approx(abs(line["bf16"][k] - line["fp32"][k]), abs=2e-5)
    # bf16 rounds the convs' inputs to 8 mantissa bits; the output is cast back before |psi| and arg psi
    assert line["abs_diff"]["mse"] <= 0.01 * line["fp32"]["mse"]
    assert line["abs_diff"]["ari_fg"] <= 0.05


def test_a_missing_checkpoint_is_one_error_line(tmp_path):
    res = subprocess.run([sys.executable, "benchmarks/precision_ari.py", "--checkpoint", str(tmp_path / "nope.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no such checkpoint file" in res.stderr and "Traceback" not in res.stderr
