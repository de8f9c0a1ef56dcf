"""benchmarks/eval.py runs end to end at small sizes, in both precisions, with its roofline."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_eval_benchmark_prints_throughput_agreement_and_roofline():
    lines = {}
    for precision in ("fp32", "bf16"):
        res = subprocess.run(
            [sys.executable, "benchmarks/eval.py", "--profile", "ctcae_tetrominoes_small", "--n-images", "16",
             "--n-agree", "16", "--batch-size", "8", "--repeats", "1", "--threads", "1", "--roofline",
             "--precision", precision],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        line = lines[precision] = json.loads(res.stdout.strip().splitlines()[-1])
        assert line["precision"] == precision and line["n_images"] == 16 and line["threads"] == 1
        assert line["ari_fg_abs_diff_vs_sklearn"] <= 0.05 and line["images_per_s"] > 0
        assert line["forward_gflop_s"] == pytest.approx(line["forward_gflop"] / line["forward_s"], rel=0.01)
        assert line["images_per_s_forward_at_peak"] == pytest.approx(8 * line["conv_peak_gflop_s"] / line["forward_gflop"], rel=0.01)
    # FLOPs are counted, not timed: the same work in either precision
    assert lines["fp32"]["forward_gflop"] == lines["bf16"]["forward_gflop"] > 0
