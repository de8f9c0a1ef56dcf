"""Command line: ``python -m ctcae_core.data {generate,import-emorl,import-tfrecord,info}``.

Long work shows a tqdm progress bar on stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .. import cli
from .storage import (
    DEFAULT_N_TEST, GENERATED_NAMES, MANIFEST, DatasetError, check_replaceable, generate_dataset, read_manifest,
    staging_dir, verify_shards,
)


def _bar(total: int | None, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=quiet, file=sys.stderr, dynamic_ncols=True)


def cmd_generate(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if (out / MANIFEST).exists() and not args.overwrite:
        raise DatasetError(f"{out}: already holds a dataset; pass --overwrite to regenerate it")
    check_replaceable(out)
    n_objects = tuple(args.n_objects) if args.n_objects else None

    def generate(target: Path) -> dict:
        with _bar(args.n + args.n_test, f"generate {args.name}", args.quiet) as bar:
            return generate_dataset(
                args.name, target, n_train=args.n, n_test=args.n_test, seed=args.seed, n_objects=n_objects,
                progress=bar.update, workers=args.workers,
            )

    if (out / MANIFEST).exists():  # a complete dataset stays in place until its replacement is complete
        with staging_dir(out, overwrite=True) as tmp:
            m = generate(tmp)
        return _summary(out, m)
    new_dir = not out.exists()
    try:
        m = generate(out)
    except Exception:
        # A new directory goes; one left by an interrupted run (Ctrl-C) stays, the next run resumes it.
        if new_dir:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return _summary(out, m)


def cmd_import_emorl(args: argparse.Namespace) -> dict:
    from .importers import import_emorl

    with _bar(None, f"import {Path(args.file).name}", args.quiet) as bar:
        m = import_emorl(args.file, name=args.name, out=args.out, overwrite=args.overwrite, progress=bar.update)
    return _summary(Path(args.out), m)


def cmd_import_tfrecord(args: argparse.Namespace) -> dict:
    from .importers import import_tfrecord

    with _bar(None, f"import {Path(args.file).name}", args.quiet) as bar:
        m = import_tfrecord(
            args.file, name=args.name, out=args.out, n_test=args.n_test, limit=args.limit, overwrite=args.overwrite,
            progress=bar.update,
        )
    return _summary(Path(args.out), m)


def cmd_info(args: argparse.Namespace) -> dict:
    out = Path(args.dir)
    m = read_manifest(out)
    hashed = verify_shards(out, m, full=args.verify)
    s = _summary(out, m)
    s["checksums"] = "verified" if "checksums" in m else "absent (manifest older than checksums)"
    s["verified_shards"] = hashed
    if not args.quiet:
        print(f"dataset   {m['name']} ({m['kind']}) at {out}", file=sys.stderr)
        print(f"resolution {m['height']}x{m['width']}", file=sys.stderr)
        for split, info in m["splits"].items():
            print(f"{split:6s} {info['n']:8d} images, per object count {info['counts']}", file=sys.stderr)
        prov = m.get("generator") or m.get("source")
        print(f"provenance {json.dumps(prov, sort_keys=True)}", file=sys.stderr)
    return s


def _summary(path: Path, m: dict) -> dict:
    return {
        "dir": str(path),
        "name": m["name"],
        "kind": m["kind"],
        "resolution": m["resolution"],
        "splits": {s: v["n"] for s, v in m["splits"].items()},
        "counts": m["counts"],
        "counts_per_split": {s: v["counts"] for s, v in m["splits"].items()},
        "seed": m.get("seed"),
        "generator_version": m.get("generator_version"),
        "provenance": m.get("generator") or m.get("source"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m ctcae_core.data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a procedural dataset into a directory")
    g.add_argument("name", choices=GENERATED_NAMES)
    g.add_argument("--n", type=cli.count(2), required=True, help="train split size (the last 5%% become the val split)")
    g.add_argument("--n-test", type=cli.count(1), default=DEFAULT_N_TEST, help="test split size (default %(default)s)")
    g.add_argument("--out", required=True, help="dataset directory to write")
    g.add_argument("--seed", type=cli.count(0), default=0)
    g.add_argument("--n-objects", type=cli.count(1), nargs=2, metavar=("MIN", "MAX"), help="object-count range per image")
    g.add_argument("--workers", type=cli.count(1), default=1, help="generator processes (same bytes for any value)")
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(fn=cmd_generate)

    e = sub.add_parser("import-emorl", help="import an EMORL h5 file (groups train/val/test with imgs, masks)")
    e.add_argument("file")
    e.add_argument("--name", required=True, help="dataset name, e.g. tetrominoes, multi_dsprites, clevr6")
    e.add_argument("--out", required=True)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(fn=cmd_import_emorl)

    t = sub.add_parser("import-tfrecord", help="import a DeepMind multi_object_datasets TFRecord (GZIP) file")
    t.add_argument("file")
    t.add_argument("--name", required=True, help="tetrominoes | multi_dsprites | clevr_with_masks | clevr6")
    t.add_argument("--out", required=True)
    t.add_argument("--n-test", type=cli.count(1), default=DEFAULT_N_TEST, help="the first N records form the test split")
    t.add_argument("--limit", type=cli.count(1), default=None, help="read only the first N records")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(fn=cmd_import_tfrecord)

    i = sub.add_parser("info", help="counts per object count, resolution and provenance of a dataset directory")
    i.add_argument("dir")
    i.add_argument("--verify", action="store_true", help="rehash every shard and check its row count (default: sizes, cached hashes)")
    i.set_defaults(fn=cmd_info)
    for sp in (g, e, t, i):
        sp.add_argument("--quiet", action="store_true", help="no progress bar / report on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command; an expected failure is one ``error:`` line and exit code 2 (ctcae_core/cli.py)."""
    return cli.run_main(_main, argv, json_error=True)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    result = args.fn(args)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
