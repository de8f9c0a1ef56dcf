#!/usr/bin/env python
"""Another study beside the running ones: the overlay's RayJob with a generated name.

    kubectl kustomize k8s/overlays/gpu \\
      | python k8s/study_job.py --space ablations/contrastive.yaml --name contrastive \\
      | kubectl create -f -

Reads a kustomize build on stdin and prints only its RayJob, with ``metadata.generateName``
(``ctcae-<name>-`` plus a suffix the API server picks, so every submission is a new object and no
finished RayJob has to be deleted first) and the entrypoint's ``--space`` / ``--name`` replaced.
Use ``kubectl create`` (``apply`` refuses objects without a name). The study file must be in the
image's copy of the repository; the same ``--name`` again resumes that study
(``--resume-if-exists``).
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

ROOT = Path(__file__).resolve().parents[1]


def set_flag(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with ``flag value`` set (replaced where present, appended otherwise)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if arg.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    return out + [flag, value]


def study_job(docs: list[dict[str, Any]], space: str, name: str) -> dict[str, Any]:
    """The one RayJob of `docs`, renamed by generateName and running study `space` as `name`."""
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    if len(jobs) != 1:
        raise ValueError(f"expected one RayJob in the build, found {len(jobs)}")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9_-]{0,40}[a-z0-9])?", name):
        raise ValueError(f"--name {name!r}: lower-case letters, digits, '-' and '_' (at most 42)")
    if not (ROOT / space).is_file():
        raise ValueError(f"--space {space}: no such study file in the repository (the image has the same files)")
    job = jobs[0]
    meta = job["metadata"]
    meta.pop("name", None)
    meta["generateName"] = f"ctcae-{name.replace('_', '-')}-"
    meta.setdefault("labels", {})["ctcae.study"] = name.replace("_", "-")
    args = shlex.split(job["spec"]["entrypoint"])
    args = set_flag(set_flag(args, "--space", space), "--name", name)
    if "--resume-if-exists" not in args:
        args.append("--resume-if-exists")
    job["spec"]["entrypoint"] = shlex.join(args)
    return job


def main(argv: list[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", required=True, help="study file, relative to the repository root (ablations/*.yaml)")
    parser.add_argument("--name", required=True, help="study name (Optuna study, MLflow parent run, Ray experiment)")
    args = parser.parse_args(argv)
    docs = [d for d in yaml.safe_load_all(stdin) if d]
    try:
        job = study_job(docs, args.space, args.name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    yaml.safe_dump(job, stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
