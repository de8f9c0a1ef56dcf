"""Import of the real samples (EMORL h5 and GZIP TFRecord), and bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctcae_core.data import DatasetError, open_dataset, read_manifest
from ctcae_core.data import dsprites
from ctcae_core.data.base import chunk_rng
from ctcae_core.data.importers import import_emorl, import_tfrecord, write_tfrecord_sample
from ctcae_core.data.tfrecord import crc32c, encode_example, parse_example, read_records, write_records

REAL = Path(__file__).parent / "data" / "real"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tetro():
    d = np.load(REAL / "tetrominoes_test_first10.npz")
    return d["image"], d["mask"]  # (10, 35, 35, 3), (10, 4, 35, 35, 1)


@pytest.fixture(scope="module")
def clevr():
    d = np.load(REAL / "clevr_with_masks_first2.npz")
    return d["image"], d["mask"]  # (2, 240, 320, 3), (2, 11, 240, 320, 1)


def expected_labels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent oracle: per pixel the object entity covering it, renumbered 1..n."""
    m = masks[..., 0] > 0  # (n, K, h, w)
    labels = np.zeros(m.shape[:1] + m.shape[2:], dtype=np.int64)
    counts = []
    for i in range(m.shape[0]):
        k_new = 0
        for k in range(1, m.shape[1]):
            if m[i, k].any():
                k_new += 1
                labels[i][m[i, k]] = k_new
        counts.append(k_new)
    return labels, np.array(counts)


def write_h5(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    with h5py.File(path, "w") as f:
        for name, (imgs, masks) in splits.items():
            g = f.create_group(name)
            g["imgs"] = imgs
            g["masks"] = masks


def no_leftovers(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}.tmp") for p in out.parent.iterdir())


def test_crc32c_and_example_roundtrip():
    assert crc32c(b"123456789") == 0xE3069283
    big = np.random.default_rng(0).integers(0, 256, 70_000, dtype=np.uint8).tobytes()
    import zlib  # crc32 (not c) must differ: guards against using the wrong polynomial

    assert crc32c(big) != zlib.crc32(big)
    ex = parse_example(encode_example({"image": np.arange(300, dtype=np.uint8), "x": np.array([0.5, 2.0], np.float32)}))
    np.testing.assert_array_equal(ex["image"], np.arange(300, dtype=np.uint8))
    np.testing.assert_array_equal(ex["x"], [0.5, 2.0])


def test_example_wire_format_matches_protobuf(tmp_path):
    """Our hand-written Example encoder/parser agree with the protobuf runtime."""
    pytest.importorskip("google.protobuf")  # comes with ray / mlflow (the search extra)
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="ex_test.proto", package="tfx", syntax="proto3")
    L, R, O = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED, descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
               descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    T = descriptor_pb2.FieldDescriptorProto
    bl = fdp.message_type.add(name="BytesList")
    bl.field.add(name="value", number=1, label=L, type=T.TYPE_BYTES)
    fl = fdp.message_type.add(name="FloatList")
    fl.field.add(name="value", number=1, label=R, type=T.TYPE_FLOAT)
    feat = fdp.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for i, (n, t) in enumerate([("bytes_list", ".tfx.BytesList"), ("float_list", ".tfx.FloatList")]):
        feat.field.add(name=n, number=i + 1, label=O, type=T.TYPE_MESSAGE, type_name=t, oneof_index=0)
    feats = fdp.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=O, type=T.TYPE_STRING)
    entry.field.add(name="value", number=2, label=O, type=T.TYPE_MESSAGE, type_name=".tfx.Feature")
    feats.field.add(name="feature", number=1, label=R, type=T.TYPE_MESSAGE, type_name=".tfx.Features.FeatureEntry")
    exm = fdp.message_type.add(name="Example")
    exm.field.add(name="features", number=1, label=O, type=T.TYPE_MESSAGE, type_name=".tfx.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Example = message_factory.GetMessageClass(pool.FindMessageTypeByName("tfx.Example"))

    img = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    theirs = Example.FromString(encode_example({"image": img, "x": np.array([1.25, -3.0], np.float32)}))
    assert list(theirs.features.feature["image"].bytes_list.value) == [bytes([v]) for v in img.reshape(-1)]
    assert list(theirs.features.feature["x"].float_list.value) == [1.25, -3.0]
    # and the reverse: a protobuf-serialised Example (one value per byte, as DeepMind's) parses
    ours = Example()
    ours.features.feature["mask"].bytes_list.value.extend(bytes([v]) for v in img.reshape(-1))
    ours.features.feature["blob"].bytes_list.value.append(img.tobytes())
    ours.features.feature["y"].float_list.value.extend([0.5, 7.0])
    parsed = parse_example(ours.SerializeToString())
    np.testing.assert_array_equal(parsed["mask"], img.reshape(-1))
    np.testing.assert_array_equal(parsed["blob"], img.reshape(-1))
    np.testing.assert_array_equal(parsed["y"], [0.5, 7.0])


def test_import_emorl_tetrominoes(tmp_path, tetro):
    imgs, masks = tetro
    f = tmp_path / "tetrominoes.h5"
    write_h5(f, {"train": (imgs[:8], masks[:8]), "test": (imgs[8:], masks[8:])})
    m = import_emorl(f, name="tetrominoes", out=tmp_path / "tet")
    assert {s: v["n"] for s, v in m["splits"].items()} == {"train": 7, "val": 1, "test": 2}
    assert m["counts"] == {"3": 10} and m["resolution"] == [35, 35] and m["source"]["format"] == "emorl-h5"
    lab, cnt = expected_labels(masks)
    train = open_dataset(tmp_path / "tet", "train", None)
    val = open_dataset(tmp_path / "tet", "val", None)
    test = open_dataset(tmp_path / "tet", "test", None)
    np.testing.assert_array_equal(train.images.permute(0, 2, 3, 1).numpy(), imgs[:7])
    np.testing.assert_array_equal(train.labels.numpy(), lab[:7])
    np.testing.assert_array_equal(val.labels.numpy(), lab[7:8])
    np.testing.assert_array_equal(test.labels.numpy(), lab[8:])
    assert train.n_objects.tolist() == cnt[:7].tolist() == [3] * 7
    small = open_dataset(tmp_path / "tet", "test", 32)
    assert small.images.shape == (2, 3, 32, 32) and set(small.labels.unique().tolist()) == {0, 1, 2, 3}


def test_import_tfrecord_tetrominoes_equals_h5(tmp_path, tetro):
    imgs, masks = tetro
    rec = tmp_path / "tetrominoes_train.tfrecords"
    write_tfrecord_sample(rec, imgs, masks)
    with open(rec, "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"  # GZIP
    assert len(list(read_records(rec))) == 10
    m = import_tfrecord(rec, name="tetrominoes", out=tmp_path / "tet", n_test=2)
    assert {s: v["n"] for s, v in m["splits"].items()} == {"train": 7, "val": 1, "test": 2}
    lab, _ = expected_labels(masks)
    test = open_dataset(tmp_path / "tet", "test", None)  # the first records
    train = open_dataset(tmp_path / "tet", "train", None)
    np.testing.assert_array_equal(test.images.permute(0, 2, 3, 1).numpy(), imgs[:2])
    np.testing.assert_array_equal(test.labels.numpy(), lab[:2])
    np.testing.assert_array_equal(train.labels.numpy(), lab[2:9])
    assert (train.n_objects == 3).all()


def test_import_clevr_crop_and_recount(tmp_path, clevr):
    imgs, masks = clevr
    crop_masks = masks[:, :, 29:221, 64:256]
    lab, cnt = expected_labels(crop_masks)
    full_cnt = (masks[..., 0] > 0)[:, 1:].any(axis=(2, 3)).sum(axis=1)
    assert (cnt < full_cnt).any()  # the crop really drops objects in these samples
    rec = tmp_path / "clevr_with_masks_train.tfrecords"
    write_tfrecord_sample(rec, imgs, masks)
    import_tfrecord(rec, name="clevr_with_masks", out=tmp_path / "cl", n_test=1)
    f = tmp_path / "clevr.h5"
    write_h5(f, {"train": (imgs[1:], masks[1:]), "test": (imgs[:1], masks[:1])})
    import_emorl(f, name="clevr_with_masks", out=tmp_path / "clh5")
    for d in (tmp_path / "cl", tmp_path / "clh5"):
        m = read_manifest(d)
        assert m["resolution"] == [192, 192] and m["source"]["crop"] == [29, 221, 64, 256]
        test = open_dataset(d, "test", None)
        np.testing.assert_array_equal(test.images.permute(0, 2, 3, 1).numpy(), imgs[:1, 29:221, 64:256])
        np.testing.assert_array_equal(test.labels.numpy(), lab[:1])
        assert test.n_objects.tolist() == [int(cnt[0])]
        tr = open_dataset(d, "train", 96)
        assert tr.n_objects.tolist() == [int(cnt[1])] and tr.images.shape == (1, 3, 96, 96)
        # 192 -> 96 labels are the nearest source pixels
        np.testing.assert_array_equal(tr.labels.numpy()[0], lab[1][1::2, 1::2])
    # CLEVR6 keeps scenes with at most 6 objects: both samples have more
    assert full_cnt.min() > 6
    m = import_tfrecord(rec, name="clevr6", out=tmp_path / "c6", n_test=1)
    assert m["counts"] == {} and m["source"]["max_objects"] == 6


def test_import_tfrecord_multi_dsprites_layout(tmp_path):
    """multi_dsprites records store masks (H, W, K, 1); the importer transposes them back."""
    b = dsprites.generate(6, chunk_rng(0, 0, 0))
    masks = np.zeros((6, 6, 64, 64, 1), dtype=np.uint8)
    for k in range(6):
        masks[:, k, :, :, 0] = np.where(b.labels == k, 255, 0)
    rec = tmp_path / "multi_dsprites_colored_on_grayscale.tfrecords"
    write_tfrecord_sample(rec, b.images, masks, mask_order="hwk")
    import_tfrecord(rec, name="multi_dsprites", out=tmp_path / "md", n_test=2)
    te = open_dataset(tmp_path / "md", "test", None)
    np.testing.assert_array_equal(te.labels.numpy(), b.labels[:2])
    assert te.n_objects.tolist() == b.n_objects[:2].tolist()


def test_overlapping_masks_become_minus_one(tmp_path, tetro):
    imgs, masks = tetro
    masks = masks[:3].copy()
    masks[0, 1, 0:4, 0:4, 0] = 255  # object 1 also claims a corner that object 2 claims
    masks[0, 2, 0:2, 0:2, 0] = 255
    f = tmp_path / "ov.h5"
    write_h5(f, {"train": (imgs[:2], masks[:2]), "test": (imgs[2:3], masks[2:3])})
    import_emorl(f, name="tetrominoes", out=tmp_path / "ov")
    tr = open_dataset(tmp_path / "ov", "train", None)
    lab = tr.labels.numpy()[0]
    assert (lab[0:2, 0:2] == -1).all() and (lab[2:4, 0:4] == 1).all() and (lab[0:2, 2:4] == 1).all()
    assert tr.get_batch([0])["labels"].min() == -1


def test_bad_input_errors_leave_nothing(tmp_path, tetro):
    imgs, masks = tetro
    out = tmp_path / "out"

    def check(fn, match):
        with pytest.raises(DatasetError, match=match):
            fn()
        assert no_leftovers(out)

    check(lambda: import_emorl(tmp_path / "missing.h5", name="tetrominoes", out=out), "missing.h5: no such file")
    check(lambda: import_tfrecord(tmp_path / "missing.tfr", name="tetrominoes", out=out), "missing.tfr: no such file")
    # wrong layout: no split groups
    f = tmp_path / "flat.h5"
    with h5py.File(f, "w") as h:
        h["imgs"] = imgs
        h["masks"] = masks
    check(lambda: import_emorl(f, name="tetrominoes", out=out), r"flat.h5: expected groups 'train'.*found keys \['imgs', 'masks'\]")
    # missing key
    f = tmp_path / "nomask.h5"
    with h5py.File(f, "w") as h:
        h.create_group("train")["imgs"] = imgs
    check(lambda: import_emorl(f, name="tetrominoes", out=out), "nomask.h5: group 'train' has no key 'masks'")
    # masks that do not match the images (count and size)
    f = tmp_path / "mismatch.h5"
    write_h5(f, {"train": (imgs, masks[:9])})
    check(lambda: import_emorl(f, name="tetrominoes", out=out), r"mismatch.h5: key 'train/masks': expected \(N, K, H, W, 1\) = \(10")
    f = tmp_path / "mismatch2.h5"
    write_h5(f, {"train": (imgs, masks[:, :, :34])})
    check(lambda: import_emorl(f, name="tetrominoes", out=out), "mismatch2.h5: key 'train/masks'")
    # masks that leave pixels unexplained, and non-binary masks; the second block fails after
    # a shard was already written, and still nothing is left behind
    bad = masks.copy()
    bad[9, 0] = 0
    f = tmp_path / "uncovered.h5"
    write_h5(f, {"train": (imgs, bad)})
    with pytest.raises(DatasetError, match=r"uncovered.h5:train: key 'masks': image 9: masks leave"):
        import_emorl(f, name="tetrominoes", out=out, block=5)
    assert no_leftovers(out)
    bad = masks.copy()
    bad[0, 1, 0, 0, 0] = 7
    f = tmp_path / "values.h5"
    write_h5(f, {"train": (imgs, bad)})
    check(lambda: import_emorl(f, name="tetrominoes", out=out), "values.h5:train: key 'masks': expected mask values 0/255")
    # TFRecord: truncated, corrupted, wrong record layout
    rec = tmp_path / "good.tfrecords"
    write_tfrecord_sample(rec, imgs, masks)
    raw = rec.read_bytes()
    trunc = tmp_path / "trunc.tfrecords"
    trunc.write_bytes(raw[: len(raw) // 2])
    check(lambda: import_tfrecord(trunc, name="tetrominoes", out=out, n_test=2), "trunc.tfrecords: record .*truncated")
    plain = gzip.decompress(raw)
    cut = tmp_path / "cut.tfrecords"  # uncompressed, cut inside a record
    cut.write_bytes(plain[:-10])
    check(lambda: import_tfrecord(cut, name="tetrominoes", out=out, n_test=2), r"cut.tfrecords: record 9: truncated")
    flipped = bytearray(plain)
    flipped[100] ^= 0xFF
    corrupt = tmp_path / "corrupt.tfrecords"
    corrupt.write_bytes(bytes(flipped))
    check(lambda: import_tfrecord(corrupt, name="tetrominoes", out=out, n_test=2), "corrupt.tfrecords: record 0: data CRC mismatch")
    check(lambda: import_tfrecord(rec, name="multi_dsprites", out=out, n_test=2), r"good.tfrecords: record 0: feature 'image': expected 64x64x3")
    wrong_k = tmp_path / "wrongk.tfrecords"
    write_tfrecord_sample(wrong_k, imgs, masks[:, :3])
    check(lambda: import_tfrecord(wrong_k, name="tetrominoes", out=out, n_test=2), r"feature 'mask': expected 4x35x35x1")
    nomask = tmp_path / "nomask.tfrecords"
    write_records(nomask, [encode_example({"image": imgs[0]})])
    check(lambda: import_tfrecord(nomask, name="tetrominoes", out=out, n_test=0), "record 0: no feature 'mask'")
    check(lambda: import_tfrecord(rec, name="cifar", out=out), "--name 'cifar'")
    check(lambda: import_tfrecord(rec, name="tetrominoes", out=out, n_test=10), "10 records, not more than n_test=10")
    # an existing output is never clobbered by accident
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="already exists"):
        import_tfrecord(rec, name="tetrominoes", out=out, n_test=2)
    assert (out / "keep.txt").exists()


def test_cli_import_and_info(tmp_path, tetro):
    imgs, masks = tetro
    rec = tmp_path / "t.tfrecords"
    write_tfrecord_sample(rec, imgs, masks)
    run = lambda *a: subprocess.run([sys.executable, "-m", "ctcae_core.data", *a], cwd=ROOT, capture_output=True, text=True)
    r = run("import-tfrecord", str(rec), "--name", "tetrominoes", "--out", str(tmp_path / "d"), "--n-test", "2")
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["splits"] == {"train": 7, "val": 1, "test": 2} and last["counts"] == {"3": 10}
    r = run("info", str(tmp_path / "d"))
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["resolution"] == [35, 35] and info["provenance"]["format"] == "tfrecord"
    assert "per object count" in r.stderr
    r = run("import-emorl", str(tmp_path / "nope.h5"), "--name", "tetrominoes", "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "nope.h5: no such file" in json.loads(r.stdout.strip().splitlines()[-1])["error"]
    r = run("generate", "multi_dsprites", "--n", "40", "--n-test", "5", "--out", str(tmp_path / "g"), "--n-objects", "4", "6")
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(g["counts"]) <= {"4", "5", "6"} and sum(g["counts"].values()) == 45
    assert "generate multi_dsprites" in r.stderr  # tqdm progress bar
