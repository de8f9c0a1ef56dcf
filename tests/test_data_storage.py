"""Parquet storage, caching, splits, filters, resizing and atomic writes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ctcae_core.data import (
    DatasetError,
    default_cache_dir,
    ensure_generated,
    generate_dataset,
    open_dataset,
    parse_n_objects,
    read_manifest,
)
from ctcae_core.data.base import chunk_rng
from ctcae_core.data import tetrominoes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sprites_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "sprites"
    generate_dataset("multi_dsprites", out, n_train=400, n_test=60, seed=3)
    return out


def test_open_generated_dataset_items_and_batches(cache):
    ds = open_dataset("tetrominoes", "train", 32, n_train=200, n_test=20, seed=0, cache_dir=cache)
    assert len(ds) == 190  # 5 % held out for val
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["labels"].shape == (32, 32) and item["labels"].dtype == torch.int64
    assert item["n_objects"] == 3 and isinstance(item["n_objects"], int)
    idx = torch.tensor([5, 0, 7])
    b = ds.get_batch(idx)
    assert b["image"].shape == (3, 3, 32, 32) and b["labels"].shape == (3, 32, 32) and b["n_objects"].dtype == torch.int64
    torch.testing.assert_close(b["image"][0], ds[5]["image"])
    assert torch.equal(b["labels"][2], ds[7]["labels"])
    # labels after nearest resize keep their values: background and 3 pieces
    assert set(torch.unique(b["labels"]).tolist()) == {0, 1, 2, 3}


def test_dataset_on_a_device_gathers_batches_there(cache):
    """train.data_on_device: the split moves once and each batch is gathered on its device. The
    meta device stands in for a GPU here: no data, but every tensor op must run on it."""
    ds = open_dataset("tetrominoes", "train", 32, n_train=200, n_test=20, seed=0, cache_dir=cache)
    assert ds.to("cpu") is ds  # no copy where the split already is
    on_meta = ds.to("meta")
    assert on_meta.images.dtype == torch.uint8 and len(on_meta) == len(ds) and on_meta.resolution == ds.resolution
    b = on_meta.get_batch(torch.tensor([5, 0, 7]))  # CPU indices follow the data
    assert {t.device.type for t in b.values()} == {"meta"}
    assert b["image"].shape == (3, 3, 32, 32) and b["image"].dtype == torch.float32 and b["labels"].dtype == torch.int64
    assert ds.device.type == "cpu" and on_meta.device.type == "meta"


def test_manifest_and_cache_reuse(cache):
    d1 = ensure_generated("tetrominoes", n_train=200, n_test=20, seed=0, cache_dir=cache)
    m = read_manifest(d1)
    assert m["name"] == "tetrominoes" and m["resolution"] == [35, 35]
    assert m["seed"] == 0 and m["generator_version"] == tetrominoes.VERSION
    assert m["counts"] == {"3": 220}
    assert {s: v["n"] for s, v in m["splits"].items()} == {"train": 190, "val": 10, "test": 20}
    mtime = (d1 / "manifest.json").stat().st_mtime_ns
    d2 = ensure_generated("tetrominoes", n_train=200, n_test=20, seed=0, cache_dir=cache)
    assert d1 == d2 and (d2 / "manifest.json").stat().st_mtime_ns == mtime  # nothing regenerated


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CTCAE_DATA_CACHE", str(tmp_path / "envcache"))
    d = open_dataset("tetrominoes", "test", n_train=20, n_test=4)
    assert d.path.parent == tmp_path / "envcache" / "generated" and len(d) == 4
    monkeypatch.delenv("CTCAE_DATA_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "ctcae"


def test_splits_fixed_and_disjoint(cache):
    kw = dict(n_train=200, n_test=20, seed=0, cache_dir=cache)
    tr, va, te = (open_dataset("tetrominoes", s, None, **kw) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (190, 10, 20)
    assert set(tr.index.tolist()).isdisjoint(va.index.tolist())
    assert sorted(tr.index.tolist() + va.index.tolist()) == list(range(200))
    rows = lambda d: {bytes(x) for x in d.images.numpy().reshape(len(d), -1)}
    assert rows(tr).isdisjoint(rows(te)) and rows(tr).isdisjoint(rows(va)) and rows(va).isdisjoint(rows(te))
    # fixed: reopening gives identical splits, and so does regenerating in another cache
    tr2 = open_dataset("tetrominoes", "train", None, **kw)
    assert torch.equal(tr.images, tr2.images)
    other = open_dataset("tetrominoes", "val", None, n_train=200, n_test=20, seed=0, cache_dir=cache / "other")
    assert torch.equal(va.images, other.images)
    with pytest.raises(DatasetError, match="split 'dev'"):
        open_dataset("tetrominoes", "dev", None, **kw)


def test_same_seed_same_bytes_across_workers(tmp_path):
    # generated shards depend on (seed, stream, chunk) only, not on how many processes made them
    a = generate_dataset("tetrominoes", tmp_path / "a", n_train=2500, n_test=10, seed=11)
    b = generate_dataset("tetrominoes", tmp_path / "b", n_train=2500, n_test=10, seed=11, workers=2)
    assert a["splits"] == b["splits"]
    for s in a["splits"]["train"]["shards"]:
        ta, tb = pq.read_table(tmp_path / "a" / s), pq.read_table(tmp_path / "b" / s)
        assert ta.column("image").equals(tb.column("image")) and ta.column("labels").equals(tb.column("labels"))
    first = tetrominoes.generate(tetrominoes.CHUNK, chunk_rng(11, 0, 0))
    t = pq.read_table(tmp_path / "a" / "train-00000.parquet")
    assert t.column("image")[3].as_py() == first.images[3].tobytes()
    assert t.column("factor_orientation")[3].as_py() == first.factors["orientation"][3].tolist()


def test_stored_resolution_returns_stored_pixels(sprites_dir):
    ds = open_dataset(sprites_dir, "test", 64)
    t = pq.read_table(sprites_dir / "test-00000.parquet")
    raw = np.frombuffer(b"".join(t.column("image").to_pylist()), np.uint8).reshape(-1, 64, 64, 3)
    lab = np.frombuffer(b"".join(t.column("labels").to_pylist()), np.int8).reshape(-1, 64, 64)
    np.testing.assert_array_equal(ds.images.permute(0, 2, 3, 1).numpy(), raw)
    np.testing.assert_array_equal(ds.labels.numpy(), lab)
    assert ds.get_batch([0])["image"].mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()[0].tobytes() == raw[0].tobytes()
    # 64 -> 32: area average of 2x2 blocks, labels by nearest
    half = open_dataset(sprites_dir, "test", 32)
    expect = raw.reshape(-1, 32, 2, 32, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(half.images.permute(0, 2, 3, 1).numpy() - expect).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(half.labels.numpy(), lab[:, 1::2, 1::2])


def test_n_objects_filter(sprites_dir):
    full = open_dataset(sprites_dir, "train", 32)
    counts = np.bincount(full.n_objects.numpy(), minlength=7)
    assert counts[2:6].min() > 0 and counts[:2].sum() == 0 and counts[6:].sum() == 0
    m = read_manifest(sprites_dir)
    assert m["splits"]["train"]["counts"] == {str(k): int(c) for k, c in enumerate(counts) if c}
    for spec, allowed in [
        ("<=4", {2, 3, 4}),
        (">=5", {5}),
        ("5", {5}),
        (5, {5}),
        ("4,5", {4, 5}),
        ([2, 5], {2, 5}),
        ("1-3", {2, 3}),
        ("<3", {2}),
        ("", {2, 3, 4, 5}),
    ]:
        ds = open_dataset(sprites_dir, "train", 32, n_objects=spec)
        assert set(ds.n_objects.tolist()) == allowed, spec
        assert len(ds) == sum(counts[k] for k in allowed), spec
        # the filtered rows are exactly the matching rows of the full split
        keep = torch.isin(full.n_objects, torch.tensor(sorted(allowed)))
        assert torch.equal(ds.images, full.images[keep]), spec
    for bad in ("abc", "<=x", True, 2.5):
        with pytest.raises(DatasetError, match="n_objects"):
            parse_n_objects(bad)


def test_object_range_spec_and_resizing_35_to_32(cache):
    ds = open_dataset("tetrominoes:1-4", "test", 32, n_train=20, n_test=40, cache_dir=cache)
    assert set(ds.n_objects.tolist()) <= {1, 2, 3, 4} and len(set(ds.n_objects.tolist())) > 1
    native = open_dataset("tetrominoes:1-4", "test", None, n_train=20, n_test=40, cache_dir=cache)
    assert native.resolution == (35, 35) and ds.resolution == (32, 32)
    # nearest labels: every output label is the label of the source pixel under its centre
    src = ((np.arange(32) + 0.5) * 35 / 32).astype(int)
    np.testing.assert_array_equal(ds.labels.numpy(), native.labels.numpy()[:, src][:, :, src])
    # bilinear images stay close to the native pixels in mean colour
    assert abs(ds.images.float().mean() - native.images.float().mean()) < 2.0


def test_unknown_spec_and_clevr6_errors(tmp_path):
    with pytest.raises(DatasetError, match="import"):
        open_dataset("clevr6", "train", 32, cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="not a generated dataset"):
        open_dataset("mnist", "train", 32, cache_dir=tmp_path)


def test_killed_generation_leaves_no_readable_partial_shard(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ctcae_core.data", "generate", "tetrominoes", "--n", "400000", "--n-test", "10",
           "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(out.glob("*.parquet"))) < 2:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    shards = sorted(out.glob("*.parquet"))
    assert 2 <= len(shards) < 200  # stopped midway
    assert not (out / "manifest.json").exists()
    for s in shards:  # every file named like a shard is complete
        assert pq.read_table(s).num_rows == tetrominoes.CHUNK
    for other in out.iterdir():  # anything else is a hidden temp file, never listed as a shard
        if other.suffix != ".parquet" and other.name != ".spec.json":
            assert other.name.startswith(".") and ".tmp-" in other.name
            try:
                rows = pq.read_table(other).num_rows
            except Exception:
                continue  # cut off mid-write: unreadable
            assert rows == tetrominoes.CHUNK  # killed between the last byte and the rename
    with pytest.raises(DatasetError, match="incomplete"):
        open_dataset(out, "train", 32)


def test_interrupted_generation_resumes_identically(tmp_path):
    out = tmp_path / "resume"
    calls = []

    def stop_after_two(n: int) -> None:
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_dataset("tetrominoes", out, n_train=6000, n_test=10, seed=2, progress=stop_after_two)
    assert not (out / "manifest.json").exists()
    done = sorted(out.glob("*.parquet"))
    assert [p.name for p in done] == ["train-00000.parquet", "train-00001.parquet"]
    mtimes = [p.stat().st_mtime_ns for p in done]
    generate_dataset("tetrominoes", out, n_train=6000, n_test=10, seed=2)
    assert [p.stat().st_mtime_ns for p in done] == mtimes  # finished shards were kept
    fresh = generate_dataset("tetrominoes", tmp_path / "fresh", n_train=6000, n_test=10, seed=2)
    assert read_manifest(out)["splits"] == fresh["splits"]
    a = open_dataset(out, "val", None)
    b = open_dataset(tmp_path / "fresh", "val", None)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_concurrent_cache_generation(tmp_path):
    # two processes (as two Ray workers would) ask for the same uncached spec at once
    code = (
        "import sys, hashlib; from ctcae_core.data.storage import ensure_generated as g; "
        "d=g('multi_dsprites',n_train=300,n_test=10,seed=5,cache_dir=sys.argv[1]); "
        "h=hashlib.sha256(b''.join((d/s).read_bytes() for s in sorted(p.name for p in d.glob('*.parquet')))); "
        "print(d, h.hexdigest())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    d = Path(outs[0][0])
    assert read_manifest(d)["splits"]["train"]["n"] == 285
    assert [p.name for p in d.iterdir() if ".tmp-" in p.name] == []
    assert len(open_dataset("multi_dsprites", "train", 32, n_train=300, n_test=10, seed=5, cache_dir=tmp_path)) == 285
