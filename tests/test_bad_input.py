"""Bad input, per command: one ``error:`` line naming the file or key, exit code 2, no traceback,
and the file system exactly as it was (issue 10).

Each table row is (case id, argv, text the message must hold). The commands run in-process
(``main(argv)``), so a row costs no interpreter start; a few rows also run as real subprocesses.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ctcae_core import evaluate as evaluate_cmd
from ctcae_core import train as train_cmd
from ctcae_core.config import ConfigError, ExperimentConfig, get_profile, load_config_file
from ctcae_core.data import DatasetError, open_dataset
from ctcae_core.data import __main__ as data_cmd
from ctcae_core.data.storage import MANIFEST, generate_dataset, read_manifest
from ctcae_core.train import fit

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(__file__).parent / "data" / "real"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root``: its content hash (files) or "dir"."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_bad(main, argv: list[str], root: Path, capsys) -> str:
    """Run a command that must refuse its input; returns stderr after checking the contract."""
    before = snapshot(root)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert_two_part(lines[0])
    assert snapshot(root) == before, "the command changed the file system"
    return lines[0]


def assert_two_part(line: str) -> None:
    """``error: <what>; <what to do>``: both parts present."""
    what, sep, todo = line[len("error: "):].rpartition("; ")
    assert sep and what.strip() and todo.strip(), f"no '; <what to do>' part: {line}"


# ---------------------------------------------------------------- shared inputs
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny dataset, a tiny trained run, and assorted bad files, all under one root."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    generate_dataset("tetrominoes", data, n_train=60, n_test=8)
    cfg = get_profile("tiny").with_overrides(
        [f"data.dataset={data}", "train.steps=2", "train.eval_every=2", "train.eval_images=4", "train.batch_size=4"]
    )
    run = root / "run"
    fit(cfg, out_dir=run, progress=False)
    ckpt = run / "checkpoint_last.pt"
    (root / "cfg.yaml").write_text(json.dumps(cfg.to_dict()))
    (root / "bad_yaml.yaml").write_text("model: [unclosed\n")
    (root / "dup.yaml").write_text("name: a\nname: b\n")
    (root / "unknown_key.yaml").write_text("nmae: x\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "text.pt").write_text("not a checkpoint\n")
    (root / "a_file").write_text("x")
    (root / "empty_dir").mkdir()
    raw = ckpt.read_bytes()
    (root / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    torch.save(torch.load(ckpt, weights_only=False)["model"], root / "state_dict.pt")
    (root / "not.tfrecord").write_bytes(b"\xff" * 64)  # a header claiming ~2**64 bytes
    d = np.load(REAL / "tetrominoes_test_first10.npz")
    with h5py.File(root / "good.h5", "w") as f:
        g = f.create_group("train")
        g["imgs"], g["masks"] = d["image"], d["mask"]
    (root / "empty.yaml").write_text("")
    (root / "list.yaml").write_text("- train\n- model\n")
    (root / "section_scalar.yaml").write_text("train: 5\n")
    (root / "empty.pt").write_bytes(b"")
    payload = torch.load(ckpt, weights_only=False)
    payload["config"]["contrastive"]["weight"] = float("nan")
    torch.save(payload, root / "nan_config.pt")
    for name, text in (("list_manifest", "[1, 2]\n"), ("empty_manifest", "{}\n")):
        (root / name).mkdir()
        (root / name / MANIFEST).write_text(text)
    with h5py.File(root / "no_groups.h5", "w"):
        pass
    (root / "empty.tfrecord").write_bytes(b"")
    user = root / "user_dir"  # a directory the project did not write
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    (user / "train-00000.parquet").write_text("the user's own parquet")
    return {"root": root, "data": data, "cfg": cfg, "run": run, "ckpt": ckpt}


# ---------------------------------------------------------------- train
TRAIN_CASES = [
    # (id, argv with {root}/{ckpt}/{data}, text the message names)
    ("config-missing", ["--config", "{root}/nope.yaml"], "nope.yaml"),
    ("config-is-dir", ["--config", "{root}/empty_dir"], "empty_dir"),
    ("config-bad-yaml", ["--config", "{root}/bad_yaml.yaml"], "bad_yaml.yaml"),
    ("config-duplicate-key", ["--config", "{root}/dup.yaml"], "'name' appears twice"),
    ("config-unknown-key", ["--config", "{root}/unknown_key.yaml"], "nmae"),
    ("config-binary", ["--config", "{root}/binary.yaml"], "binary.yaml"),
    ("profile-unknown", ["--profile", "nope"], "nope"),
    ("both-profile-and-config", ["--profile", "tiny", "--config", "{root}/cfg.yaml"], "exactly one"),
    ("set-nan-weight", ["--profile", "tiny", "--set", "contrastive.weight=nan"], "contrastive.weight"),
    ("set-inf-lr", ["--profile", "tiny", "--set", "train.lr=inf"], "train.lr"),
    ("set-negative-lr", ["--profile", "tiny", "--set", "train.lr=-1"], "train.lr"),
    ("set-nan-temperature", ["--profile", "tiny", "--set", "contrastive.temperature=nan"], "contrastive.temperature"),
    ("set-nan-phase-noise", ["--profile", "tiny", "--set", "model.phase_noise=nan"], "model.phase_noise"),
    ("set-device-tpu", ["--profile", "tiny", "--set", "train.device=tpu"], "train.device"),
    ("set-unknown-key", ["--profile", "tiny", "--set", "train.nope=1"], "train.nope"),
    ("set-no-equals", ["--profile", "tiny", "--set", "train.steps"], "train.steps"),
    ("set-not-int", ["--profile", "tiny", "--set", "train.steps=many"], "train.steps"),
    ("set-negative-seed", ["--profile", "tiny", "--set", "train.seed=-3"], "train.seed"),
    ("steps-zero", ["--profile", "tiny", "--steps", "0"], "--steps"),
    ("batch-larger-than-dataset", ["--config", "{root}/cfg.yaml", "--set", "train.batch_size=1000"], "train.batch_size"),
    ("dataset-missing", ["--profile", "tiny", "--set", "data.dataset={root}/nowhere"], "nowhere"),
    ("out-is-file", ["--config", "{root}/cfg.yaml", "--out", "{root}/a_file"], "a_file"),
    ("resume-missing", ["--config", "{root}/cfg.yaml", "--resume", "{root}/nope.pt"], "nope.pt"),
    ("resume-not-checkpoint", ["--config", "{root}/cfg.yaml", "--resume", "{root}/text.pt"], "text.pt"),
    ("resume-truncated", ["--config", "{root}/cfg.yaml", "--resume", "{root}/truncated.pt"], "truncated.pt"),
    ("resume-state-dict", ["--config", "{root}/cfg.yaml", "--resume", "{root}/state_dict.pt"], "bare state_dict"),
    ("resume-other-resolution", ["--config", "{root}/cfg.yaml", "--set", "data.resolution=16", "--resume", "{ckpt}"],
     "data.resolution=32"),
    # a new user's mistakes, second round
    ("config-empty-yaml", ["--config", "{root}/empty.yaml"], "empty.yaml: top level: got NoneType"),
    ("config-yaml-list", ["--config", "{root}/list.yaml"], "list.yaml: top level: got list"),
    ("config-section-scalar", ["--config", "{root}/section_scalar.yaml"], "train: got int 5"),
    ("set-key-typo", ["--profile", "tiny", "--set", "train.stpes=3"], "did you mean 'train.steps'?"),
    ("set-key-without-section", ["--profile", "tiny", "--set", "lr=1e-3"], "did you mean 'train.lr'?"),
    ("set-tuple-not-int", ["--profile", "tiny", "--set", "model.enc_channels=8,8,x,16,16"], "model.enc_channels"),
    ("set-resolution-zero", ["--profile", "tiny", "--set", "data.resolution=0"], "data.resolution"),
    ("set-resolution-too-small", ["--profile", "tiny", "--set", "data.resolution=3"], "data.resolution=3"),
    ("set-too-many-stride-2", ["--profile", "tiny", "--set", "model.enc_channels=8,8,8,8,8,8,8", "--set",
                               "model.enc_strides=2,2,2,2,2,2,2", "--set", "model.enc_kernels=3,3,3,3,3,3,3"],
     "last encoder map (1x1"),
    ("set-dec-patch-not-a-divisor", ["--profile", "tiny", "--set", "contrastive.dec_patch=5"], "contrastive.dec_patch"),
    ("set-test-n-objects-negative", ["--profile", "tiny", "--set", "data.test_n_objects=0,-1"], "data.test_n_objects"),
    ("set-train-n-objects-garbage", ["--config", "{root}/cfg.yaml", "--set", "data.train_n_objects=abc"], "'abc'"),
    pytest.param("set-device-cuda-absent", ["--profile", "tiny", "--set", "train.device=cuda:0"], "'cuda:0'",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    ("set-device-cuda-out-of-range", ["--profile", "tiny", "--set", "train.device=cuda:99"], "'cuda:99'"),
    ("resume-empty-file", ["--config", "{root}/cfg.yaml", "--resume", "{root}/empty.pt"], "empty.pt"),
    ("out-holds-an-earlier-run", ["--config", "{root}/cfg.yaml", "--out", "{root}/run"], "--resume"),
    ("dataset-range-beyond-max", ["--profile", "tiny", "--set", "data.dataset=tetrominoes:5-12"], "n_objects (5, 12)"),
    ("eval-images-zero", ["--profile", "tiny", "--set", "train.eval_images=0"], "train.eval_images"),
    ("layers-two-values", ["--profile", "tiny", "--set", "contrastive.layers=both,decoder"], "contrastive.layers"),
]


def _fill(argv: list[str], w: dict) -> list[str]:
    return [a.format(root=w["root"], ckpt=w["ckpt"], data=w["data"]) for a in argv]


@pytest.mark.parametrize("case,argv,named", TRAIN_CASES, ids=[(c.values if hasattr(c, "marks") else c)[0] for c in TRAIN_CASES])
def test_train_bad_input(world, capsys, case, argv, named):
    argv = _fill(argv, world)
    if "--out" not in argv:
        argv += ["--out", str(world["root"] / "new_run")]
    line = run_bad(train_cmd.main, argv + ["--no-progress"], world["root"], capsys)
    assert named in line


def test_train_resume_message_names_both_resolutions(world, capsys):
    argv = _fill(["--config", "{root}/cfg.yaml", "--set", "data.resolution=16", "--resume", "{ckpt}"], world)
    line = run_bad(train_cmd.main, argv + ["--out", str(world["root"] / "r"), "--no-progress"], world["root"], capsys)
    assert "data.resolution=32" in line and "data.resolution=16" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_train_unwritable_out(world, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = _fill(["--config", "{root}/cfg.yaml"], world) + ["--out", str(locked / "run"), "--no-progress"]
        line = run_bad(train_cmd.main, argv, tmp_path, capsys)
        assert "locked" in line
    finally:
        locked.chmod(0o700)


def test_train_failure_after_start_leaves_no_directory(world, tmp_path, capsys):
    """A run that fails at its first step (non-finite loss) leaves no half-made directory."""
    argv = _fill(["--config", "{root}/cfg.yaml", "--set", "train.inject_nan_at=0"], world)
    line = run_bad(train_cmd.main, argv + ["--out", str(tmp_path / "run"), "--no-progress"], tmp_path, capsys)
    assert "non-finite loss" in line and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- evaluate
EVAL_CASES = [
    ("checkpoint-missing", ["--checkpoint", "{root}/nope.pt"], "nope.pt"),
    ("checkpoint-dir-without-model", ["--checkpoint", "{root}/empty_dir"], "empty_dir"),
    ("checkpoint-not-a-checkpoint", ["--checkpoint", "{root}/text.pt"], "text.pt"),
    ("checkpoint-truncated", ["--checkpoint", "{root}/truncated.pt"], "truncated.pt"),
    ("checkpoint-bare-state-dict", ["--checkpoint", "{root}/state_dict.pt"], "bare state_dict"),
    ("checkpoint-a-yaml", ["--checkpoint", "{root}/cfg.yaml"], "cfg.yaml"),
    ("empty-split", ["--checkpoint", "{ckpt}", "--n-objects", "7"], "no image"),
    ("dataset-missing", ["--checkpoint", "{ckpt}", "--dataset", "{root}/nowhere"], "nowhere"),
    ("dataset-not-a-dataset", ["--checkpoint", "{ckpt}", "--dataset", "{root}/user_dir"], "user_dir"),
    ("batch-size-zero", ["--checkpoint", "{ckpt}", "--batch-size", "0"], "--batch-size"),
    ("max-images-negative", ["--checkpoint", "{ckpt}", "--max-images", "-1"], "--max-images"),
    ("n-objects-zero", ["--checkpoint", "{ckpt}", "--n-objects", "0"], "--n-objects"),
    ("split-unknown", ["--checkpoint", "{ckpt}", "--split", "dev"], "--split"),
    ("checkpoint-empty-file", ["--checkpoint", "{root}/empty.pt"], "empty.pt"),
    ("checkpoint-config-nan", ["--checkpoint", "{root}/nan_config.pt"], "contrastive.weight"),
    ("dataset-a-file", ["--checkpoint", "{ckpt}", "--dataset", "{root}/a_file"], "a_file"),
    ("dataset-manifest-a-list", ["--checkpoint", "{ckpt}", "--dataset", "{root}/list_manifest"], "list_manifest"),
    ("device-tpu", ["--checkpoint", "{ckpt}", "--device", "tpu"], "'tpu'"),
    ("device-cuda-out-of-range", ["--checkpoint", "{ckpt}", "--device", "cuda:99"], "'cuda:99'"),
    ("batch-size-text", ["--checkpoint", "{ckpt}", "--batch-size", "ten"], "--batch-size"),
]


@pytest.mark.parametrize("case,argv,named", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_evaluate_bad_input(world, capsys, case, argv, named):
    argv = _fill(argv, world)
    line = run_bad(evaluate_cmd.main, argv if "--device" in argv else argv + ["--device", "cpu"], world["root"], capsys)
    assert named in line


def test_evaluate_run_directory_and_valid_json(world, capsys):
    """A run directory is accepted as --checkpoint (its last checkpoint), and the output is strict JSON."""
    assert evaluate_cmd.main(["--checkpoint", str(world["run"]), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert result["n_images"] == 8
    assert all(v is None or np.isfinite(v) for v in result.values() if not isinstance(v, (str, dict)))


# ---------------------------------------------------------------- data
DATA_CASES = [
    ("generate-n-zero", ["generate", "tetrominoes", "--n", "0", "--out", "{root}/g"], "--n"),
    ("generate-n-negative", ["generate", "tetrominoes", "--n", "-5", "--out", "{root}/g"], "--n"),
    ("generate-n-test-zero", ["generate", "tetrominoes", "--n", "10", "--n-test", "0", "--out", "{root}/g"], "--n-test"),
    ("generate-objects-reversed", ["generate", "tetrominoes", "--n", "10", "--n-objects", "5", "2", "--out", "{root}/g"],
     "n_objects (5, 2)"),
    ("generate-objects-too-many", ["generate", "tetrominoes", "--n", "10", "--n-objects", "2", "99", "--out", "{root}/g"],
     "n_objects (2, 99)"),
    ("generate-objects-zero", ["generate", "tetrominoes", "--n", "10", "--n-objects", "0", "3", "--out", "{root}/g"],
     "--n-objects"),
    ("generate-workers-zero", ["generate", "tetrominoes", "--n", "10", "--workers", "0", "--out", "{root}/g"], "--workers"),
    ("generate-seed-negative", ["generate", "tetrominoes", "--n", "10", "--seed", "-1", "--out", "{root}/g"], "--seed"),
    ("generate-unknown-name", ["generate", "nope", "--n", "10", "--out", "{root}/g"], "nope"),
    ("generate-out-is-file", ["generate", "tetrominoes", "--n", "10", "--out", "{root}/a_file"], "a_file"),
    ("generate-existing-no-overwrite", ["generate", "tetrominoes", "--n", "10", "--out", "{data}"], "--overwrite"),
    ("generate-overwrite-user-dir", ["generate", "tetrominoes", "--n", "10", "--out", "{root}/user_dir", "--overwrite"],
     "thesis.tex"),
    ("emorl-overwrite-user-dir", ["import-emorl", "{root}/good.h5", "--name", "tetrominoes", "--out", "{root}/user_dir",
                                  "--overwrite"], "thesis.tex"),
    ("emorl-exists-no-overwrite", ["import-emorl", "{root}/good.h5", "--name", "tetrominoes", "--out", "{data}"],
     "--overwrite"),
    ("emorl-missing-file", ["import-emorl", "{root}/nope.h5", "--name", "tetrominoes", "--out", "{root}/g"], "nope.h5"),
    ("emorl-not-hdf5", ["import-emorl", "{root}/text.pt", "--name", "tetrominoes", "--out", "{root}/g"], "text.pt"),
    ("emorl-out-is-file", ["import-emorl", "{root}/good.h5", "--name", "tetrominoes", "--out", "{root}/a_file",
                           "--overwrite"], "a_file"),
    ("tfrecord-overwrite-user-dir", ["import-tfrecord", "{root}/not.tfrecord", "--name", "tetrominoes", "--out",
                                     "{root}/user_dir", "--overwrite"], "not.tfrecord"),
    ("tfrecord-not-a-tfrecord", ["import-tfrecord", "{root}/not.tfrecord", "--name", "tetrominoes", "--out", "{root}/g"],
     "not.tfrecord"),
    ("tfrecord-limit-zero", ["import-tfrecord", "{root}/not.tfrecord", "--name", "tetrominoes", "--out", "{root}/g",
                             "--limit", "0"], "--limit"),
    ("tfrecord-unknown-name", ["import-tfrecord", "{root}/not.tfrecord", "--name", "nope", "--out", "{root}/g"], "nope"),
    ("info-missing", ["info", "{root}/nowhere"], "nowhere"),
    ("info-not-a-dataset", ["info", "{root}/user_dir"], "user_dir"),
    ("info-a-file", ["info", "{root}/a_file"], "a_file"),
    ("info-manifest-a-list", ["info", "{root}/list_manifest"], "list_manifest"),
    ("info-manifest-empty", ["info", "{root}/empty_manifest"], "empty_manifest"),
    ("no-subcommand", [], "command"),
    ("generate-out-under-a-file", ["generate", "tetrominoes", "--n", "10", "--out", "{root}/a_file/sub"], "a_file/sub"),
    ("emorl-no-groups", ["import-emorl", "{root}/no_groups.h5", "--name", "tetrominoes", "--out", "{root}/g"], "no_groups.h5"),
    ("emorl-a-directory", ["import-emorl", "{root}/empty_dir", "--name", "tetrominoes", "--out", "{root}/g"], "empty_dir"),
    ("tfrecord-empty-file", ["import-tfrecord", "{root}/empty.tfrecord", "--name", "tetrominoes", "--out", "{root}/g"],
     "empty.tfrecord"),
]


@pytest.mark.parametrize("case,argv,named", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_bad_input(world, capsys, case, argv, named):
    line = run_bad(data_cmd.main, _fill(argv, world) + (["--quiet"] if argv else []), world["root"], capsys)
    assert named in line


def _copy_dataset(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_overwrite_refuses_a_dataset_holding_a_user_file(world, tmp_path, capsys):
    ds = _copy_dataset(world["data"], tmp_path / "ds")
    (ds / "notes.txt").write_text("mine")
    line = run_bad(data_cmd.main, ["import-emorl", str(world["root"] / "good.h5"), "--name", "tetrominoes", "--out",
                                   str(ds), "--overwrite", "--quiet"], tmp_path, capsys)
    assert "notes.txt" in line


def test_overwrite_replaces_a_project_directory(world, tmp_path, capsys):
    ds = _copy_dataset(world["data"], tmp_path / "ds")
    argv = ["import-emorl", str(world["root"] / "good.h5"), "--name", "tetrominoes", "--out", str(ds), "--overwrite", "--quiet"]
    assert data_cmd.main(argv) == 0
    assert read_manifest(ds)["kind"] == "imported"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary or old directory left beside it
    gen = ["generate", "tetrominoes", "--n", "10", "--n-test", "2", "--out", str(ds), "--overwrite", "--quiet"]
    assert data_cmd.main(gen) == 0 and read_manifest(ds)["kind"] == "generated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_missing_and_damaged_shards_are_named(world, tmp_path, capsys):
    ds = _copy_dataset(world["data"], tmp_path / "ds")
    shard = sorted(ds.glob("train-*.parquet"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=rf"{shard.name}: sha256 does not match.*ctcae_core.data generate tetrominoes"):
        open_dataset(ds, "train")
    line = run_bad(data_cmd.main, ["info", str(ds), "--verify", "--quiet"], tmp_path, capsys)
    assert shard.name in line and "generate tetrominoes --n 60" in line
    shard.unlink()
    line = run_bad(data_cmd.main, ["info", str(ds), "--quiet"], tmp_path, capsys)
    assert shard.name in line and "missing" in line


def test_info_verify_and_old_manifests(world, tmp_path, capsys):
    assert data_cmd.main(["info", str(world["data"]), "--verify", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = read_manifest(world["data"])
    assert info["checksums"] == "verified" and info["verified_shards"] == len(m["checksums"]) > 0
    assert all(v["rows"] > 0 and len(v["sha256"]) == 64 for v in m["checksums"].values())
    # A manifest from before checksums: accepted, with a warning that says how to add them.
    ds = _copy_dataset(world["data"], tmp_path / "old")
    old = json.loads((ds / MANIFEST).read_text())
    del old["checksums"]
    (ds / MANIFEST).write_text(json.dumps(old))
    with pytest.warns(UserWarning, match="before shard checksums"):
        assert len(open_dataset(ds, "test")) == 8


def test_config_validation_rejects_nonfinite_and_duplicates(tmp_path):
    for bad in ({"contrastive": {"weight": float("nan")}}, {"train": {"lr": float("inf")}},
                {"model": {"phase_bias_init": float("-inf")}}):
        with pytest.raises(ConfigError, match="finite"):
            ExperimentConfig.from_dict(bad)
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 1\n  steps: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 3: key 'steps' appears twice"):
        load_config_file(str(f))


# ---------------------------------------------------------------- real processes, --debug
def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CTCAE_DEBUG": ""}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.slow  # two fresh interpreters
def test_subprocess_one_line_and_debug_traceback(world):
    bad = str(world["root"] / "text.pt")
    r = _python("-m", "ctcae_core.evaluate", "--checkpoint", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "text.pt" in r.stderr
    r = _python("-m", "ctcae_core.evaluate", "--checkpoint", bad, "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "CheckpointError" in r.stderr


# ---------------------------------------------------------------- search/ commands (no Ray, no server)
STUDY_OK = """\
base: {profile: tiny}
space:
  model.decoder: {choice: [upsample, transpose]}
"""
STUDY_CASES = [
    ("duplicate-key", "base: {profile: tiny}\nbase: {profile: tiny}\nspace:\n  model.decoder: {choice: [upsample]}\n",
     "'base' appears twice"),
    ("duplicate-space-key", STUDY_OK + "  model.decoder: {choice: [transpose]}\n", "'model.decoder' appears twice"),
    ("unknown-dataset-choice", STUDY_OK + "  data.dataset: {choice: [tetrominoes, nope]}\n", "'nope'"),
    ("batch-larger-than-dataset", STUDY_OK + "  train.batch_size: {choice: [16, 5000]}\n", "train.batch_size 5000"),
    ("batch-bound-larger-than-dataset", STUDY_OK + "  train.batch_size: {int: [8, 5000]}\n", "train.batch_size 5000"),
    ("nan-bound", STUDY_OK + "  train.lr: {loguniform: [.nan, 1.0e-3]}\n", "space.train.lr"),
    ("nan-choice", STUDY_OK + "  contrastive.weight: {choice: [0.0, .nan]}\n", "contrastive.weight"),
    ("inf-condition", STUDY_OK + "  contrastive.dec_top_k:\n    choice: [3, 5]\n    when: {contrastive.weight: {gt: .inf}}\n",
     "contrastive.weight.gt"),
    ("base-unknown-dataset", "base: {profile: tiny}\ndata: {dataset: nope}\nspace:\n  model.decoder: {choice: [upsample]}\n",
     "'nope'"),
    ("empty-file", "", "empty study file"),
    ("a-yaml-list", "- base\n- space\n", "got list"),
    ("python-text", "import os\nprint('hi')\n", "got str"),
    ("values-as-a-list", "base: {profile: tiny}\nspace:\n  model.decoder: [upsample, transpose]\n", "space.model.decoder"),
    ("objective-metric-typo", STUDY_OK + "objective: {metric: val_ari, mode: max}\n", "'val_ari'"),
    ("profile-typo", "base: {profile: tinyy}\nspace:\n  model.decoder: {choice: [upsample]}\n", "did you mean 'tiny'?"),
    ("positives-never-with-top-k", STUDY_OK + "  contrastive.dec_positives: {choice: [1, 8]}\n  contrastive.dec_top_k: {choice: [8, 4]}\n",
     "contrastive.dec_positives=8, contrastive.dec_top_k=4"),
    ("positives-bound-past-top-k-bound", STUDY_OK + "  contrastive.dec_positives: {int: [1, 9]}\n  contrastive.dec_top_k: {int: [5, 12]}\n",
     "contrastive.dec_positives=9, contrastive.dec_top_k=5"),
    ("batch-vs-searched-train-size", STUDY_OK + "  train.batch_size: {choice: [16, 300]}\n  data.n_train: {choice: [400, 100]}\n",
     "train.batch_size=300, data.n_train=100"),
    ("bound-outside-config-range", STUDY_OK + "  model.phase_noise: {uniform: [0.0, 4.0]}\n", "model.phase_noise"),
    ("resolution-too-small", STUDY_OK + "  data.resolution: {choice: [32, 3]}\n", "data.resolution=3"),
]


@pytest.fixture
def search_root(tmp_path):
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    return tmp_path


@pytest.mark.parametrize("case,text,named", STUDY_CASES, ids=[c[0] for c in STUDY_CASES])
def test_run_refuses_bad_study_before_ray(search_root, capsys, case, text, named):
    from search import run as run_cmd

    f = search_root / f"{case}.yaml"
    f.write_text(text)
    line = run_bad(run_cmd.main, ["--space", str(f), "--tracking-uri", f"sqlite:///{search_root}/m.db"], search_root, capsys)
    assert named in line and f.name in line


def test_study_values_kept_apart_by_a_condition_are_accepted():
    """dec_positives 8 never meets dec_top_k 4: the condition keeps them apart, so the study is valid."""
    from search.space import parse_study

    study = parse_study(STUDY_OK + "  contrastive.dec_top_k: {choice: [10, 4]}\n  contrastive.dec_positives:\n"
                        "    choice: [1, 8]\n    when: {contrastive.dec_top_k: {ge: 8}}\n", source="ok.yaml")
    assert [p.key for p in study.params][-2:] == ["contrastive.dec_top_k", "contrastive.dec_positives"]


@pytest.mark.parametrize("argv,named", [
    (["--space", "{root}/binary.yaml"], "binary.yaml"),
    (["--space", "{root}/missing.yaml"], "missing.yaml"),
    (["--space", "{root}"], "cannot read"),
    (["--space", "{root}/ok.yaml", "--num-samples", "0"], "--num-samples"),
    (["--space", "{root}/ok.yaml", "--max-concurrent", "-1"], "--max-concurrent"),
    (["--space", "{root}/ok.yaml", "--tracking-uri", "http://127.0.0.1:9"], "127.0.0.1:9"),
    (["--space", "{root}/ok.yaml", "--tracking-uri", "foo"], "'foo'"),
    (["--space", "{root}/ok.yaml", "--num-cpus", "0"], "--num-cpus"),
    (["--space", "{root}/ok.yaml", "--name", "my study!"], "--name 'my study!'"),
    (["--space", "{root}/workers.yaml", "--num-cpus", "2"], "--num-cpus"),
    pytest.param(["--space", "{root}/gpu.yaml"], "gpus_per_worker",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
], ids=["binary", "missing", "directory", "num-samples-zero", "max-concurrent-negative", "server-unreachable",
        "tracking-uri-not-a-uri", "num-cpus-zero", "name-not-a-name", "more-workers-than-cpus", "gpus-on-a-machine-without"])
def test_run_bad_arguments(search_root, capsys, argv, named):
    from search import run as run_cmd

    (search_root / "ok.yaml").write_text(STUDY_OK)
    (search_root / "gpu.yaml").write_text(STUDY_OK + "resources: {gpus_per_worker: 1}\n")
    (search_root / "workers.yaml").write_text(STUDY_OK + "resources: {workers: 3, cpus_per_worker: 1}\n")
    argv = [a.format(root=search_root) for a in argv]
    if "--tracking-uri" not in argv:
        argv += ["--tracking-uri", f"sqlite:///{search_root}/m.db"]
    assert named in run_bad(run_cmd.main, argv, search_root, capsys)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a hung server)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.mark.slow  # waits out a silent server
@pytest.mark.parametrize("which", ["refused", "silent", "missing-sqlite"])
def test_report_and_evaluate_give_up_on_the_tracking_server(search_root, capsys, silent_server, which, world):
    import time

    import mlflow.exceptions  # noqa: F401 - imported before the clock starts: the bound is on waiting, not importing
    import mlflow.tracking  # noqa: F401

    from search import evaluate as search_evaluate
    from search import report as report_cmd

    uri = {"refused": "http://127.0.0.1:9", "silent": silent_server,
           "missing-sqlite": f"sqlite:///{search_root}/none.db"}[which]
    for main, argv in ((report_cmd.main, ["--study", "s", "--out", str(search_root / "rep")]),
                       (search_evaluate.main, ["--run", "0123abcd"])):
        t0 = time.monotonic()
        line = run_bad(main, argv + ["--tracking-uri", uri], search_root, capsys)
        assert time.monotonic() - t0 < 15
        assert uri.split("///")[-1] in line or uri in line


@pytest.mark.parametrize("case,argv,named", [
    ("checkpoint-missing", ["--checkpoint", "{root}/nope.pt"], "nope.pt"),
    ("not-a-checkpoint", ["--checkpoint", "{root}/text.pt"], "text.pt"),
    ("bare-state-dict", ["--checkpoint", "{root}/state_dict.pt"], "bare state_dict"),
    ("empty-split", ["--checkpoint", "{ckpt}", "--n-objects", "7", "--device", "cpu"], "no image"),
    ("batch-size-zero", ["--checkpoint", "{ckpt}", "--batch-size", "0"], "--batch-size"),
    ("dataset-unknown", ["--checkpoint", "{ckpt}", "--dataset", "nope", "--device", "cpu"], "'nope'"),
    ("device-tpu", ["--checkpoint", "{ckpt}", "--device", "tpu"], "'tpu'"),
], ids=["checkpoint-missing", "not-a-checkpoint", "bare-state-dict", "empty-split", "batch-size-zero", "dataset-unknown",
        "device-tpu"])
def test_search_evaluate_bad_checkpoint(world, capsys, case, argv, named):
    from search import evaluate as search_evaluate

    assert named in run_bad(search_evaluate.main, _fill(argv, world), world["root"], capsys)


# ---------------------------------------------------------------- mlflow/serve.py (a script: its own small boundary)
@pytest.fixture(scope="module")
def serve():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ctcae_serve", ROOT / "mlflow" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ctcae_serve"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["ctcae_serve"]


@pytest.mark.parametrize("case,argv,named", [
    ("port-zero", ["--port", "0", "--dry-run"], "--port"),
    ("workers-zero", ["--workers", "0", "--dry-run"], "--workers"),
    ("data-dir-under-a-file", ["--data-dir", "{root}/a_file/sub", "--port", "5999"], "Not a directory"),
    ("production-without-settings", ["--mode", "production", "--dry-run"], "MLFLOW_"),
    ("port-text", ["--port", "abc", "--dry-run"], "--port"),
    ("port-too-big", ["--port", "99999", "--dry-run"], "--port"),
    ("unknown-flag", ["--bogus"], "--bogus"),
    ("local-postgres", ["--backend-store-uri", "postgresql://u:pw@h/db", "--dry-run"], "--backend-store-uri"),
    ("public-host-local", ["--host", "0.0.0.0", "--dry-run"], "--host 0.0.0.0"),
    ("data-dir-a-file", ["--data-dir", "{root}/a_file", "--port", "5999"], "a_file"),
], ids=["port-zero", "workers-zero", "data-dir-under-a-file", "production-without-settings", "port-text", "port-too-big",
        "unknown-flag", "local-postgres", "public-host-local", "data-dir-a-file"])
def test_serve_bad_input(serve, tmp_path, capsys, monkeypatch, case, argv, named):
    for key in list(os.environ):
        if key.startswith(("MLFLOW_", "CTCAE_MLFLOW")):
            monkeypatch.delenv(key)
    (tmp_path / "a_file").write_text("x")
    before = snapshot(tmp_path)
    try:
        rc = serve.main([a.format(root=tmp_path) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[serve.py] ")]
    assert rc == 2 and "Traceback" not in err and named in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert_two_part(lines[0])
    assert "pw@" not in err  # the password is redacted
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- ordinary paths, Ctrl-C and SIGKILL
def test_paths_with_spaces_work(world, tmp_path, capsys):
    """Nothing splits a path on spaces: train into one, evaluate from it, generate into one."""
    out = tmp_path / "my runs" / "first run"
    argv = _fill(["--config", "{root}/cfg.yaml"], world) + ["--out", str(out), "--no-progress"]
    assert train_cmd.main(argv) == 0
    assert evaluate_cmd.main(["--checkpoint", str(out / "checkpoint_last.pt"), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_images"] == 8
    ds = tmp_path / "my data"
    assert data_cmd.main(["generate", "tetrominoes", "--n", "4", "--n-test", "2", "--out", str(ds), "--quiet"]) == 0
    assert read_manifest(ds)["splits"]["test"]["n"] == 2


def _wait_for(predicate, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow  # a real interpreter, trained until Ctrl-C, then resumed
def test_ctrl_c_during_train_leaves_a_resumable_checkpoint(world, tmp_path, capsys):
    import signal

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ctcae_core.train", "--config", str(world["root"] / "cfg.yaml"), "--set", "train.steps=100000",
           "--set", "train.eval_every=100000", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CTCAE_DEBUG": ""})
    # config.json is written once Ctrl-C is handled: the run then stops after its step in progress
    _wait_for(lambda: (out / "config.json").exists() or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"--resume {out / 'checkpoint_last.pt'}" in lines[0], err
    payload = torch.load(out / "checkpoint_last.pt", weights_only=False)
    step = payload["step"]
    assert step >= 1 and f"after step {step} of 100000" in lines[0]
    # whole files only: no temporary, no best checkpoint or metrics without an evaluation
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_last.pt", "config.json"]
    argv = ["--config", str(world["root"] / "cfg.yaml"), "--set", f"train.steps={step + 2}", "--out", str(out),
            "--resume", str(out / "checkpoint_last.pt"), "--no-progress"]
    assert train_cmd.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == step + 2


@pytest.mark.slow  # a real interpreter killed with SIGKILL mid-way
def test_sigkill_during_overwrite_leaves_a_temp_dir_the_next_run_clears(world, tmp_path):
    import signal
    import socket

    ds = _copy_dataset(world["data"], tmp_path / "ds")
    foreign = tmp_path / ".ds.tmp-1-deadbeef"  # named like ours, no marker: not ours to delete
    foreign.mkdir()
    live = tmp_path / f".ds.tmp-{os.getpid()}-cafebabe"  # ours, but its writer (this process) still runs
    live.mkdir()
    (live / ".ctcae-staging.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "target": "ds"}))
    cmd = [sys.executable, "-m", "ctcae_core.data", "generate", "tetrominoes", "--n", "50000", "--n-test", "10", "--out",
           str(ds), "--overwrite", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def staged() -> list[Path]:
        return [p for p in tmp_path.glob(f".ds.tmp-{proc.pid}-*") if (p / ".ctcae-staging.json").exists()]

    _wait_for(lambda: staged() or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    left = staged()
    assert len(left) == 1 and read_manifest(ds)["kind"] == "generated"  # the old dataset is intact
    assert data_cmd.main(["generate", "tetrominoes", "--n", "6", "--n-test", "2", "--out", str(ds), "--overwrite", "--quiet"]) == 0
    assert not left[0].exists() and foreign.is_dir() and live.is_dir()
    assert read_manifest(ds)["splits"]["test"]["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", foreign.name, live.name])


@pytest.fixture
def full_disk(tmp_path):
    """A real 256 KiB tmpfs: writes fail with ENOSPC (root only; skipped where mount is refused)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("cmd", ["train", "generate"])
def test_full_disk_is_named_and_leaves_nothing(world, full_disk, capsys, cmd):
    if cmd == "train":
        argv = _fill(["--config", "{root}/cfg.yaml"], world) + ["--out", str(full_disk / "run"), "--no-progress"]
        main = train_cmd.main
    else:
        argv = ["generate", "tetrominoes", "--n", "2000", "--n-test", "10", "--out", str(full_disk / "ds"), "--quiet"]
        main = data_cmd.main
    line = run_bad(main, argv, full_disk, capsys)
    assert str(full_disk) in line and "No space left on device" in line and "free some space" in line
