import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ctcae_core.checkpoint import load_checkpoint
from ctcae_core.config import ConfigError, get_profile
from ctcae_core.train import NonFiniteLossError, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("data_cache")
    return get_profile("tiny").with_overrides([f"data.cache_dir={cache}", "data.n_train=300", "data.n_test=32"])


@pytest.mark.slow  # trains for tens of seconds
def test_short_run_lowers_the_loss_and_writes_files(tiny, tmp_path):
    cfg = tiny.with_overrides(["train.steps=40", "train.eval_every=10", "train.lr=2e-3"])
    reports = []
    summary = fit(cfg, report=lambda m, d: reports.append((m, d)), out_dir=tmp_path, progress=False)
    assert [m["step"] for m, _ in reports] == [10, 20, 30, 40]
    assert reports[-1][0]["mse"] < 0.85 * reports[0][0]["mse"]
    for m, d in reports:
        assert -1 <= m["val_ari_full"] <= 1 and m["val_n_images"] == 15  # 5% of 300 held out for validation
        assert (d / "checkpoint.pt").is_file()
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.json", "config.json"):
        assert (tmp_path / name).is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["step"] == 40 and len(saved["history"]) == 4 and summary["step"] == 40
    model, cfg2, payload = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert cfg2 == cfg and payload["step"] == 40
    best = max(m["val_ari_fg"] for m, _ in reports)
    assert torch.load(tmp_path / "checkpoint_best.pt", weights_only=False)["best"] == best


@pytest.mark.slow  # trains for tens of seconds
def test_resume_continues_at_the_saved_step_with_the_same_state(tiny, tmp_path):
    cfg = tiny.with_overrides(["train.steps=20", "train.eval_every=10"])
    fit(cfg, out_dir=tmp_path / "straight", progress=False)
    fit(cfg.with_overrides(["train.steps=10"]), out_dir=tmp_path / "first", progress=False)
    steps = []
    fit(cfg, report=lambda m, d: steps.append(m["step"]), out_dir=tmp_path / "second",
        resume=tmp_path / "first" / "checkpoint_last.pt", progress=False)
    assert steps == [20]
    a = torch.load(tmp_path / "straight" / "checkpoint_last.pt", weights_only=False)
    b = torch.load(tmp_path / "second" / "checkpoint_last.pt", weights_only=False)
    assert b["step"] == 20
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(int(sa[i]["step"]) == int(sb[i]["step"]) == 20 for i in sa)
    torch.testing.assert_close(sa[0]["exp_avg_sq"], sb[0]["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_non_finite_loss_stops_with_clear_error(tiny, tmp_path):
    cfg = tiny.with_overrides(["train.inject_nan_at=3"])
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        fit(cfg, out_dir=tmp_path, progress=False)


@pytest.mark.slow  # trains for tens of seconds
def test_same_seed_same_result(tiny, tmp_path):
    cfg = tiny.with_overrides(["train.steps=10", "train.eval_every=10"])
    r1 = fit(cfg, out_dir=tmp_path / "a", progress=False)["last"]
    r2 = fit(cfg, out_dir=tmp_path / "b", progress=False)["last"]
    assert r1["loss"] == r2["loss"] and r1["val_ari_fg"] == r2["val_ari_fg"]


@pytest.mark.slow  # trains for tens of seconds
def test_train_and_evaluate_command_lines(tiny, tmp_path):
    env_cache = tiny.data.cache_dir
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ctcae_core.train", "--profile", "tiny", "--steps", "10", "--out", str(out),
           "--set", f"data.cache_dir={env_cache}", "--set", "data.n_train=300", "--set", "data.n_test=32", "--no-progress"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert last["step"] == 10 and (out / "checkpoint_best.pt").is_file()
    pictures = tmp_path / "pictures"
    res = subprocess.run([sys.executable, "-m", "ctcae_core.evaluate", "--checkpoint", str(out / "checkpoint_best.pt"),
                          "--n-objects", "3", "--pictures", str(pictures)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["n_images"] == 32 and result["count_n3"] == 32 and -1 <= result["ari_fg"] <= 1
    assert result["by_n_objects"]["3"]["n_images"] == 32 and result["precision"] == "fp32"
    # --pictures: the three panels of the first 8 test images (32 px tiles upscaled 4x, a legend column)
    names = ["phase_maps.png", "segmentation.png", "panel.png"]
    assert [Path(p).name for p in result["pictures"]] == names and sorted(p.name for p in pictures.iterdir()) == sorted(names)
    with Image.open(pictures / "panel.png") as im:
        assert im.height == 5 * (32 * 4 + 2) + 2 and im.width > 8 * (32 * 4 + 2) + 2
    with Image.open(pictures / "segmentation.png") as im:
        assert im.height == 2 * (32 * 4 + 2) + 2  # true and predicted
    not_dir = subprocess.run([sys.executable, "-m", "ctcae_core.evaluate", "--checkpoint", str(out / "checkpoint_best.pt"),
                              "--pictures", str(pictures / "panel.png")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert not_dir.returncode == 2 and "--pictures" in not_dir.stderr and "Traceback" not in not_dir.stderr
    fp16 = subprocess.run([sys.executable, "-m", "ctcae_core.evaluate", "--checkpoint", str(out / "checkpoint_best.pt"),
                           "--device", "cpu", "--precision", "fp16"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fp16.returncode == 2 and "fp16 needs a CUDA device" in fp16.stderr and "Traceback" not in fp16.stderr
    bad = subprocess.run([sys.executable, "-m", "ctcae_core.train", "--profile", "tiny", "--set", "model.decodr=x",
                          "--out", str(tmp_path / "bad")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "model.decodr" in bad.stderr and "decoder" in bad.stderr


def _ddp_worker(rank: int, world: int, init_file: str, cfg_dict: dict, out: str, queue) -> None:
    import torch.distributed as dist

    from ctcae_core.config import ExperimentConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        reports = []
        fit(ExperimentConfig.from_dict(cfg_dict), report=lambda m, d: reports.append((m, d)), out_dir=out, progress=False)
        queue.put((rank, [(m["step"], m["val_ari_fg"], m["val_n_images"], m["loss"], d is not None) for m, d in reports]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # trains for tens of seconds
def test_ddp_two_processes_share_batches_and_agree_on_metrics(tiny, tmp_path):
    import torch.multiprocessing as mp

    cfg = tiny.with_overrides(["train.steps=10", "train.eval_every=5"])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"), cfg.to_dict(), str(tmp_path / "out"), queue))
             for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    r0, r1 = results[0], results[1]
    assert [x[0] for x in r0] == [5, 10]
    # every rank reports the same all-reduced metrics; only rank 0 hands over a checkpoint
    assert [x[:4] for x in r0] == [x[:4] for x in r1]
    assert r0[0][2] == 15  # the validation images were split across the ranks and summed back
    assert all(x[4] for x in r0) and not any(x[4] for x in r1)
    assert torch.load(tmp_path / "out" / "checkpoint_last.pt", weights_only=False)["step"] == 10


def test_eval_precision_autocasts_the_evaluations_only(tiny, tmp_path):
    """train.eval_precision=bf16: the same training (losses, weights) as fp32, and the evaluations'
    forward in bf16 (their MSE moves, by less than 1%)."""
    cfg = tiny.with_overrides(["train.steps=4", "train.eval_every=2"])
    runs = {}
    for p in ("fp32", "bf16"):
        reports = []
        fit(cfg.with_overrides([f"train.eval_precision={p}"]), report=lambda m, d: reports.append(m),
            out_dir=tmp_path / p, progress=False)
        runs[p] = reports
    assert [m["loss"] for m in runs["bf16"]] == [m["loss"] for m in runs["fp32"]]
    a = torch.load(tmp_path / "fp32" / "checkpoint_last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "bf16" / "checkpoint_last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for fp32, bf16 in zip(runs["fp32"], runs["bf16"]):
        assert bf16["val_mse"] != fp32["val_mse"]
        assert abs(bf16["val_mse"] - fp32["val_mse"]) <= 0.01 * fp32["val_mse"]
    with pytest.raises(ConfigError, match="train.eval_precision: 'fp8'"):
        cfg.with_overrides(["train.eval_precision=fp8"])
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        fit(cfg.with_overrides(["train.eval_precision=fp16"]), out_dir=tmp_path / "fp16", progress=False)
