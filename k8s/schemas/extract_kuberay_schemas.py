"""Extract the v1 ``openAPIV3Schema`` of KubeRay's RayCluster and RayJob CRDs into one small JSON file.

Run as a script (the CRD YAML files are KubeRay's ``helm-chart/kuberay-operator/crds``):

    python k8s/schemas/extract_kuberay_schemas.py \
        ../shared/k8s-schemas/ray.io_rayclusters.yaml ../shared/k8s-schemas/ray.io_rayjobs.yaml \
        -o k8s/schemas/kuberay-v1.json

Both schemas repeat the same pod-template subtrees many times (head, every worker group, the
RayJob's embedded ``rayClusterSpec`` and submitter pod). Repeated subtrees are moved once into a
shared ``$defs`` and replaced by ``{"$ref": "#/$defs/dN"}``: the result validates exactly like
the original (``tests/test_k8s.py`` expands the references back and compares with the CRDs when
they are available) at a fraction of the size.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

import yaml

MIN_SUBTREE_CHARS = 400  # smaller repeats are not worth a reference


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def crd_schema(path: Path, version: str = "v1") -> tuple[str, dict]:
    """Return (kind, openAPIV3Schema) of the given served version of a CRD file."""
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    kind = crd["spec"]["names"]["kind"]
    for ver in crd["spec"]["versions"]:
        if ver["name"] == version:
            return kind, ver["schema"]["openAPIV3Schema"]
    raise KeyError(f"{path}: no version {version}")


def _count(obj: Any, counts: collections.Counter, root: bool = True) -> None:
    if isinstance(obj, dict):
        if not root:
            counts[_canon(obj)] += 1
        for value in obj.values():
            _count(value, counts, root=False)
    elif isinstance(obj, list):
        for value in obj:
            _count(value, counts, root=False)


def _replace(obj: Any, key: str, ref: dict) -> Any:
    if isinstance(obj, dict):
        if _canon(obj) == key:
            return dict(ref)
        return {k: _replace(v, key, ref) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, key, ref) for v in obj]
    return obj


def deduplicate(schemas: dict[str, dict]) -> dict[str, Any]:
    """Move repeated subtrees (largest first) into ``$defs``; returns {"$defs": ..., kind: schema}."""
    doc: dict[str, Any] = {"$defs": {}, **schemas}
    n = 0
    while True:
        counts: collections.Counter = collections.Counter()
        for kind in schemas:
            _count(doc[kind], counts)
        for name in doc["$defs"]:
            _count(doc["$defs"][name], counts)
        repeated = [k for k, c in counts.items() if c > 1 and len(k) >= MIN_SUBTREE_CHARS]
        if not repeated:
            return doc
        key = max(repeated, key=len)
        name = f"d{n}"
        n += 1
        ref = {"$ref": f"#/$defs/{name}"}
        for part in list(doc):
            if part == "$defs":
                doc["$defs"] = {k: _replace(v, key, ref) for k, v in doc["$defs"].items()}
            else:
                doc[part] = _replace(doc[part], key, ref)
        doc["$defs"][name] = json.loads(key)


def expand(obj: Any, defs: dict[str, Any]) -> Any:
    """Inverse of `deduplicate` for one schema: inline every ``#/$defs/..`` reference."""
    if isinstance(obj, dict):
        if set(obj) == {"$ref"}:
            return expand(defs[obj["$ref"].rsplit("/", 1)[1]], defs)
        return {k: expand(v, defs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand(v, defs) for v in obj]
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crds", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    schemas = dict(crd_schema(p) for p in args.crds)
    doc = deduplicate(schemas)
    doc["x-source"] = "KubeRay helm-chart/kuberay-operator/crds v1.7.0-rc.0-5-gfeeaf72 (Apache-2.0), version v1"
    args.output.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{args.output}: {args.output.stat().st_size} bytes, {len(doc['$defs'])} shared subtrees")


if __name__ == "__main__":
    main()
