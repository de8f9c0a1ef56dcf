"""Offline validation of the Kubernetes deployment in k8s/ (there is no cluster here).

What would otherwise only fail inside a cluster is checked on the *built* manifests of every
kustomization (base and each overlay):

- every YAML file parses; kustomization resources/patches exist, every manifest is used;
- a small kustomize (resources, namespace, images, JSON6902 patches) builds each overlay, and
  agrees with ``kubectl kustomize`` when that binary is installed;
- core kinds validate strictly against the Kubernetes JSON schemas (``kubernetes-validate``);
- RayCluster / RayJob validate against the KubeRay v1 CRD schemas (k8s/schemas/kuberay-v1.json)
  plus a strict key walk, because the CRD schemas accept misspelled fields;
- cross-checks: the RayJob's entrypoint script and study file exist, the tracking URI is the
  MLflow Service's name and port (and MLflow's Host allow-list accepts it), every in-cluster URI
  hits a Service port, one project image everywhere, GPUs only on the GPU worker group, head
  ``num-cpus: "0"``, workers autoscale from zero, no literal credential (secretKeyRef only, and
  every referenced Secret key is created by k8s/README.md's commands), ClusterIP Services only,
  Ray storage on one shared volume, RayJob cluster == interactive RayCluster.

Mutation tests break a copy of a built manifest and assert that the checks catch it.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SCHEMA_FILE = K8S / "schemas" / "kuberay-v1.json"
SHARED_CRDS = ROOT.parent / "shared" / "k8s-schemas"
KUSTOMIZATIONS = ["base", "overlays/local", "overlays/gpu"]
K8S_VERSIONS = ["1.30", "1.35"]  # oldest and newest minor we claim to support
PROJECT_IMAGE = "ctcae"  # the image name every overlay rewrites
GPU_GROUP = "gpu"
GPU_RESOURCE = "nvidia.com/gpu"
THIRD_PARTY_IMAGES = ("postgres:", "minio/minio:", "minio/mc:")
CONSTRAINTS = K8S / "constraints.txt"

Doc = dict[str, Any]

# ----------------------------------------------------------------------------------------------
# A minimal kustomize: what the kustomizations in k8s/ use, and an error for anything else.
# ----------------------------------------------------------------------------------------------
SUPPORTED_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}


def _unsupported(what: object) -> ValueError:
    return ValueError(f"unsupported by this minimal kustomize: {what}")


CLUSTER_SCOPED_KINDS = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def load_docs(path: Path) -> list[Doc]:
    """All non-empty YAML documents of a file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json6902(doc: Doc, ops: list[dict]) -> None:
    """Apply add/remove/replace operations (RFC 6902) to `doc` in place."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if isinstance(node, list):
            if kind == "add":
                node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[int(last)] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[int(last)]
            else:
                raise _unsupported(op)
        else:
            if kind in ("replace", "remove") and last not in node:
                raise KeyError(f"{op['path']} does not exist")
            if kind in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            else:
                raise _unsupported(op)


def _matches(doc: Doc, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    want = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group, "version": version}
    return all(want[k] == v for k, v in target.items() if k in want) and set(target) <= set(want)


def _split_image(image: str) -> tuple[str, str]:
    """('name', ':tag' or '@digest' or '')."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def iter_containers(obj: Any) -> Iterator[dict]:
    """Every container (and init container) anywhere in a manifest, CRD pod templates included."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from iter_containers(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from iter_containers(value)


def build(kdir: Path) -> list[Doc]:
    """Build a kustomization directory the way `kubectl kustomize` does, for the features used."""
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    unsupported = set(kust) - SUPPORTED_KUSTOMIZATION_KEYS
    if unsupported:
        raise _unsupported(f"{kdir}: kustomization keys {sorted(unsupported)}")
    docs: list[Doc] = []
    for res in kust.get("resources", []):
        path = kdir / res
        docs += build(path) if path.is_dir() else load_docs(path)
    for patch in kust.get("patches", []):
        ops = yaml.safe_load((kdir / patch["path"]).read_text()) if "path" in patch else yaml.safe_load(patch["patch"])
        if not isinstance(ops, list):
            raise _unsupported(f"{kdir}: only JSON6902 patches are supported")
        targets = [d for d in docs if _matches(d, patch["target"])]
        if not targets:
            raise LookupError(f"{kdir}: patch {patch} matches no resource")
        for doc in targets:
            apply_json6902(doc, ops)
    if "namespace" in kust:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED_KINDS:
                doc["metadata"]["namespace"] = kust["namespace"]
    for img in kust.get("images", []):
        for container in iter_containers(docs):
            name, suffix = _split_image(container.get("image", ""))
            if name != img["name"]:
                continue
            if "digest" in img:
                suffix = "@" + img["digest"]
            elif "newTag" in img:
                suffix = ":" + str(img["newTag"])
            container["image"] = img.get("newName", name) + suffix
    return docs


_BUILT: dict[str, list[Doc]] = {}


def built(name: str) -> list[Doc]:
    """A fresh deep copy of a kustomization's build (cached)."""
    if name not in _BUILT:
        _BUILT[name] = build(K8S / name)
    return copy.deepcopy(_BUILT[name])


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def cluster_specs(docs: list[Doc]) -> list[tuple[str, dict]]:
    """(label, RayCluster spec) of every RayCluster and every RayJob's rayClusterSpec."""
    out = [(f"RayCluster/{d['metadata']['name']}", d["spec"]) for d in find(docs, "RayCluster")]
    out += [(f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in find(docs, "RayJob")]
    return out


def ray_groups(spec: dict) -> Iterator[tuple[str, dict, dict]]:
    """(group label, group spec, container) for the head and every worker group's containers."""
    for c in spec["headGroupSpec"]["template"]["spec"]["containers"]:
        yield "head", spec["headGroupSpec"], c
    for group in spec.get("workerGroupSpecs", []):
        for c in group["template"]["spec"]["containers"]:
            yield f"worker:{group.get('groupName')}", group, c


def env_value(container: dict, name: str) -> str | None:
    for var in container.get("env", []):
        if var["name"] == name:
            return var.get("value")
    return None


# ----------------------------------------------------------------------------------------------
# Schema checks
# ----------------------------------------------------------------------------------------------
KUBERAY = json.loads(SCHEMA_FILE.read_text())
OBJECT_META_KEYS = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}


def kuberay_schema(kind: str) -> dict:
    return {**KUBERAY[kind], "$defs": KUBERAY["$defs"]}


_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}


def kuberay_validator(kind: str) -> jsonschema.protocols.Validator:
    if kind not in _VALIDATORS:
        _VALIDATORS[kind] = jsonschema.Draft202012Validator(kuberay_schema(kind))
    return _VALIDATORS[kind]


def _resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = KUBERAY["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def unknown_keys(obj: Any, schema: dict, path: str = "") -> list[str]:
    """Keys of `obj` the schema does not define, except inside free-form maps.

    Free-form: ``additionalProperties`` (labels, annotations, rayStartParams, resources: the
    values are still walked with that schema) and ``x-kubernetes-preserve-unknown-fields``.
    """
    schema = _resolve(schema)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    bad: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            if path == "/metadata":  # CRDs declare metadata as a bare object: it is ObjectMeta
                bad += [f"{path}/{k}" for k in obj if k not in OBJECT_META_KEYS]
            return bad
        for key, value in obj.items():
            if props is not None and key in props:
                bad += unknown_keys(value, props[key], f"{path}/{key}")
            elif isinstance(extra, dict):
                bad += unknown_keys(value, extra, f"{path}/{key}")
            elif extra is not True:
                bad.append(f"{path}/{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            bad += unknown_keys(value, schema["items"], f"{path}/{i}")
    return bad


def check_kuberay_schemas(docs: list[Doc]) -> list[str]:
    problems = []
    for doc in docs:
        if not doc["apiVersion"].startswith("ray.io/"):
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] != "ray.io/v1":
            problems.append(f"{where}: apiVersion {doc['apiVersion']} (KubeRay v1 expected)")
            continue
        schema = kuberay_schema(doc["kind"])
        for err in kuberay_validator(doc["kind"]).iter_errors(doc):
            problems.append(f"{where}: schema: /{'/'.join(map(str, err.absolute_path))}: {err.message}")
        problems += [f"{where}: unknown field {p}" for p in unknown_keys(doc, schema)]
    return problems


def check_core_kinds(docs: list[Doc], version: str) -> list[str]:
    problems = []
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = "/".join(map(str, err.absolute_path))
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): /{path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(err.message)
    return problems


# ----------------------------------------------------------------------------------------------
# Cross-checks
# ----------------------------------------------------------------------------------------------
def entrypoint_args(rayjob: Doc) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def _flag(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def check_entrypoint(docs: list[Doc]) -> list[str]:
    """The RayJob runs search/run.py on a study file that exists in the repository."""
    problems = []
    for job in find(docs, "RayJob"):
        args = entrypoint_args(job)
        if "$" in job["spec"]["entrypoint"]:
            problems.append("RayJob entrypoint uses $VARS: the submitter pod would expand them, not the head")
        if args[:2] != ["python", "search/run.py"]:
            problems.append(f"RayJob entrypoint must start with 'python search/run.py', got {args[:2]}")
        elif not (ROOT / args[1]).is_file():
            problems.append(f"RayJob entrypoint script {args[1]} does not exist in the repository")
        space = _flag(args, "--space")
        if space is None:
            problems.append("RayJob entrypoint has no --space")
        elif not (ROOT / space).is_file():
            problems.append(f"RayJob study file {space} does not exist in the repository")
        if _flag(args, "--address") != "auto":
            problems.append("RayJob entrypoint must join its cluster (--address auto)")
    return problems


def _service_ports(svc: Doc) -> dict[int, Any]:
    return {p["port"]: p.get("targetPort", p["port"]) for p in svc["spec"]["ports"]}


def _pods(docs: list[Doc]) -> list[tuple[str, dict, dict]]:
    """(label, pod labels, pod spec) of every Deployment / StatefulSet / Job."""
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["metadata"].get("labels", {}),
         d["spec"]["template"]["spec"])
        for d in docs if d["kind"] in WORKLOAD_KINDS
    ]  # fmt: skip


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def all_pods(docs: list[Doc]) -> list[tuple[str, dict, dict]]:
    """(label, pod labels, pod spec) of every pod template of the build: workloads, Ray heads and
    worker groups, RayJob submitters."""
    out = _pods(docs)
    for label, spec in cluster_specs(docs):
        head = spec["headGroupSpec"]["template"]
        out.append((f"{label} head", head.get("metadata", {}).get("labels", {}), head["spec"]))
        for g in spec.get("workerGroupSpecs", []):
            out.append((f"{label} worker:{g['groupName']}", g["template"].get("metadata", {}).get("labels", {}),
                        g["template"]["spec"]))
    for job in find(docs, "RayJob"):
        sub = job["spec"].get("submitterPodTemplate")
        if sub:
            out.append((f"RayJob/{job['metadata']['name']} submitter", sub.get("metadata", {}).get("labels", {}),
                        sub["spec"]))
    return out


def _service_backend(docs: list[Doc], host: str, port: int) -> str | None:
    """Why http(s)://host:port would not reach a pod, or None when it would."""
    services = find(docs, "Service", host)
    if not services:
        return f"no Service named {host}"
    svc = services[0]
    target = _service_ports(svc).get(port)
    if target is None:
        return f"Service {host} has no port {port} (ports {sorted(_service_ports(svc))})"
    selector = svc["spec"].get("selector", {})
    for label, pod_labels, pod in _pods(docs):
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            continue
        for c in pod["containers"]:
            for p in c.get("ports", []):
                if target in (p["containerPort"], p.get("name")):
                    return None
        return f"Service {host} port {port} -> targetPort {target}: no such port in {label}"
    return f"Service {host} selects no Deployment/StatefulSet"


URI_RE = re.compile(r"\b[a-z][a-z0-9+]*://[^\s\"']+")


def check_service_uris(docs: list[Doc]) -> list[str]:
    """Every URI in an env value or the entrypoint that names an in-cluster host hits a Service port."""
    problems = []
    texts: list[tuple[str, str]] = []
    for c in iter_containers(docs):
        texts += [(f"container {c['name']} env {v['name']}", v["value"]) for v in c.get("env", []) if "value" in v]
    texts += [("RayJob entrypoint", j["spec"]["entrypoint"]) for j in find(docs, "RayJob")]
    default_ports = {"http": 80, "https": 443, "postgresql": 5432, "postgresql+psycopg2": 5432}
    for where, text in texts:
        for uri in URI_RE.findall(text):
            parts = urlsplit(uri)
            host = parts.hostname
            if parts.scheme in ("s3", "file", "sqlite") or host in (None, "localhost", "127.0.0.1"):
                continue
            port = parts.port or default_ports.get(parts.scheme)
            reason = _service_backend(docs, host.split(".")[0], port)
            if reason:
                problems.append(f"{where}: {uri.split('@')[-1]}: {reason}")
    return problems


def is_allowed_host_header(allowed_hosts: list[str], host: str) -> bool:
    """MLflow's Host-header rule (mlflow.server.security_utils), without importing mlflow here.

    tests/test_mlflow_launcher.py starts a real server with the Deployment's allow-list and
    checks the same Host header against it.
    """
    return "*" in allowed_hosts or any(
        fnmatch.fnmatch(host, allowed) if "*" in allowed else host == allowed for allowed in allowed_hosts
    )


def _volumes(obj: Any) -> Iterator[dict]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "volumes" and isinstance(value, list):
                yield from value
            else:
                yield from _volumes(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _volumes(value)


def check_references(docs: list[Doc]) -> list[str]:
    """Volumes name ConfigMaps / PVCs of the build, Services select pods, StatefulSets name a Service,
    and every volumeMount names a volume of its pod."""
    problems = []
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for vol in _volumes(doc):
            if "configMap" in vol and ("ConfigMap", vol["configMap"]["name"]) not in names:
                problems.append(f"{where}: volume {vol['name']} uses missing ConfigMap {vol['configMap']['name']}")
            claim = vol.get("persistentVolumeClaim", {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in names:
                problems.append(f"{where}: volume {vol['name']} uses missing PVC {claim}")
        if doc["kind"] == "StatefulSet" and ("Service", doc["spec"]["serviceName"]) not in names:
            problems.append(f"{where}: serviceName {doc['spec']['serviceName']} is not a Service")
        if doc["kind"] in WORKLOAD_KINDS:
            selector = doc["spec"].get("selector", {}).get("matchLabels", {})
            labels = doc["spec"]["template"]["metadata"].get("labels", {})
            if any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{where}: selector {selector} does not match its pod labels")
            templates = [doc["spec"]["template"]["spec"]]
        elif doc["kind"] in ("RayCluster", "RayJob"):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            templates = [spec["headGroupSpec"]["template"]["spec"]]
            templates += [g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])]
            templates += [doc["spec"]["submitterPodTemplate"]["spec"]] if "submitterPodTemplate" in doc["spec"] else []
        else:
            templates = []
        for pod in templates:
            vols = {v["name"] for v in pod.get("volumes", [])}
            claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
            for c in pod.get("containers", []):
                for m in c.get("volumeMounts", []):
                    if m["name"] not in vols | claims:
                        problems.append(f"{where} {c['name']}: volumeMount {m['name']} has no volume")
    pod_labels = [labels for _, labels, _ in _pods(docs)]
    for svc in find(docs, "Service"):
        sel = svc["spec"].get("selector", {})
        if not any(all(lbl.get(k) == v for k, v in sel.items()) for lbl in pod_labels):
            problems.append(f"Service/{svc['metadata']['name']}: selector {sel} matches no pod")
    return problems


def check_databases(docs: list[Doc]) -> list[str]:
    """Every postgresql:// URI names a database that the Postgres StatefulSet creates."""
    problems = []
    created: set[str] = set()
    for sts in find(docs, "StatefulSet"):
        for c in iter_containers(sts):
            if env_value(c, "POSTGRES_DB"):
                created.add(env_value(c, "POSTGRES_DB"))
    for cm in find(docs, "ConfigMap"):
        for text in cm.get("data", {}).values():
            created |= set(re.findall(r"CREATE DATABASE (\w+)", text, re.I))
    for c in iter_containers(docs):
        for var in c.get("env", []):
            for uri in URI_RE.findall(var.get("value", "")):
                parts = urlsplit(uri)
                if parts.scheme.startswith("postgresql") and parts.path.strip("/") not in created:
                    problems.append(f"{c['name']} env {var['name']}: database {parts.path.strip('/')!r} is never "
                                    f"created (have {sorted(created)})")
    return problems


def check_tracking_uri(docs: list[Doc]) -> list[str]:
    """MLFLOW_TRACKING_URI on every Ray container (and the entrypoint's) = the MLflow Service."""
    problems = []
    mlflow = one(docs, "Deployment", "ctcae-mlflow")
    svc = one(docs, "Service", "ctcae-mlflow")
    svc_port = svc["spec"]["ports"][0]["port"]
    expected = f"http://{svc['metadata']['name']}:{svc_port}"
    allowed = env_value(mlflow["spec"]["template"]["spec"]["containers"][0], "MLFLOW_ALLOWED_HOSTS") or ""
    if not is_allowed_host_header([h.strip() for h in allowed.split(",")], f"{svc['metadata']['name']}:{svc_port}"):
        problems.append(f"MLflow --allowed-hosts ({allowed}) rejects Host {svc['metadata']['name']}:{svc_port}")
    for label, spec in cluster_specs(docs):
        for group, _, c in ray_groups(spec):
            uri = env_value(c, "MLFLOW_TRACKING_URI")
            if uri != expected:
                problems.append(f"{label} {group}: MLFLOW_TRACKING_URI={uri}, MLflow Service is {expected}")
    for job in find(docs, "RayJob"):
        uri = _flag(entrypoint_args(job), "--tracking-uri")
        if uri not in (None, expected):
            problems.append(f"RayJob entrypoint --tracking-uri {uri}, MLflow Service is {expected}")
    return problems


def project_image(docs: list[Doc]) -> set[str]:
    return {c["image"] for c in iter_containers(docs) if not any(t in c["image"] for t in THIRD_PARTY_IMAGES)}


def check_same_image(docs: list[Doc]) -> list[str]:
    """One project image for the Ray head, every worker group, the autoscaler and MLflow."""
    images = project_image(docs)
    for _, spec in cluster_specs(docs):
        if "image" in spec.get("autoscalerOptions", {}):
            images.add(spec["autoscalerOptions"]["image"])
    if len(images) != 1:
        return [f"more than one project image: {sorted(images)}"]
    mlflow = one(docs, "Deployment", "ctcae-mlflow")["spec"]["template"]["spec"]["containers"][0]
    if mlflow["image"] not in images:
        return [f"MLflow runs {mlflow['image']}, Ray runs {sorted(images)}"]
    return []


def _gpu(container: dict) -> list[str]:
    res = container.get("resources", {})
    return [k for k in ("limits", "requests") if GPU_RESOURCE in res.get(k, {})]


def check_gpu_placement(docs: list[Doc], require_gpu_group: bool) -> list[str]:
    """nvidia.com/gpu only in the GPU worker group (limits), never on the head or elsewhere."""
    problems = []
    for label, spec in cluster_specs(docs):
        has_gpu_group = False
        for group, gspec, c in ray_groups(spec):
            kinds = _gpu(c)
            if group == f"worker:{GPU_GROUP}":
                has_gpu_group = True
                if "limits" not in kinds or int(c["resources"]["limits"][GPU_RESOURCE]) < 1:
                    problems.append(f"{label}: GPU group container {c['name']} has no {GPU_RESOURCE} limit")
            elif kinds:
                problems.append(f"{label} {group}: {GPU_RESOURCE} in {kinds} outside the GPU group")
        if require_gpu_group and not has_gpu_group:
            problems.append(f"{label}: no worker group named {GPU_GROUP}")
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            for c in iter_containers(d):
                if _gpu(c):
                    problems.append(f"{d['kind']}/{d['metadata']['name']}: requests a GPU")
    return problems


def check_ray_topology(docs: list[Doc]) -> list[str]:
    """Head schedules no work; workers autoscale from zero with the in-tree autoscaler."""
    problems = []
    ray_version = importlib.metadata.version("ray")
    for label, spec in cluster_specs(docs):
        head = spec["headGroupSpec"]
        if head.get("rayStartParams", {}).get("num-cpus") != "0":
            problems.append(f"{label}: head rayStartParams num-cpus must be \"0\"")
        if spec.get("enableInTreeAutoscaling") is not True:
            problems.append(f"{label}: enableInTreeAutoscaling must be true")
        if spec.get("rayVersion", "").split(".")[:2] != ray_version.split(".")[:2]:
            problems.append(f"{label}: rayVersion {spec.get('rayVersion')} != installed ray {ray_version}")
        names = [g.get("groupName") for g in spec.get("workerGroupSpecs", [])]
        if len(set(names)) != len(names):
            problems.append(f"{label}: duplicate worker groupName {names}")
        if not names:
            problems.append(f"{label}: no worker group")
        for g in spec.get("workerGroupSpecs", []):
            if g.get("minReplicas") != 0:
                problems.append(f"{label} {g.get('groupName')}: minReplicas must be 0 (scale from zero)")
            if g.get("maxReplicas", 0) < 1:
                problems.append(f"{label} {g.get('groupName')}: maxReplicas must be >= 1")
    return problems


def _ray_storage_claims(spec: dict, path: str) -> dict[str, str | None]:
    """group -> claimName of the volume mounted at a prefix of `path` (None if none)."""
    out: dict[str, str | None] = {}
    for group, gspec, c in ray_groups(spec):
        volumes = {v["name"]: v for v in gspec["template"]["spec"].get("volumes", [])}
        claim = None
        for m in c.get("volumeMounts", []):
            if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
                claim = volumes.get(m["name"], {}).get("persistentVolumeClaim", {}).get("claimName")
        out[group] = claim
    return out


def check_ray_storage(docs: list[Doc], require_rwx: bool) -> list[str]:
    """The RayJob's --storage is on one PVC mounted by the head and every worker group."""
    problems = []
    for job in find(docs, "RayJob"):
        storage = _flag(entrypoint_args(job), "--storage")
        if storage is None:
            problems.append("RayJob entrypoint has no --storage")
            continue
        claims = _ray_storage_claims(job["spec"]["rayClusterSpec"], storage)
        if None in claims.values() or len(set(claims.values())) != 1:
            problems.append(f"--storage {storage} is not on one shared PVC everywhere: {claims}")
            continue
        claim = next(iter(claims.values()))
        pvcs = find(docs, "PersistentVolumeClaim", claim)
        if not pvcs:
            problems.append(f"PVC {claim} for Ray storage is not in the build")
        elif require_rwx and "ReadWriteMany" not in pvcs[0]["spec"]["accessModes"]:
            problems.append(f"PVC {claim} for Ray storage must be ReadWriteMany")
    return problems


SECRET_NAME_RE = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY$|USERNAME|_USER$", re.I)
CREDENTIAL_URI_RE = re.compile(r"://([^:/@\s]+):([^@\s]+)@")
ENV_REF_RE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{path}/{i}")
    elif isinstance(obj, str):
        yield path, obj


def check_no_literal_credentials(docs: list[Doc]) -> list[str]:
    """Credentials only through secretKeyRef; URIs carry only $(VAR) references to them."""
    problems = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Secret":
            problems.append(f"{where}: Secrets must not be in manifests (create them with kubectl)")
        for path, text in _strings(doc):
            for user, password in CREDENTIAL_URI_RE.findall(text):
                for part in (user, password):
                    if not re.fullmatch(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", part):
                        problems.append(f"{where}{path}: literal credential in URI")
        for c in iter_containers(doc):
            defined: dict[str, bool] = {}  # env name -> from a Secret
            for var in c.get("env", []):
                secret = "secretKeyRef" in var.get("valueFrom", {})
                if SECRET_NAME_RE.search(var["name"]) and not secret:
                    problems.append(f"{where} {c['name']}: env {var['name']} must come from a secretKeyRef")
                for ref in ENV_REF_RE.findall(var.get("value", "")):
                    if ref not in defined:  # Kubernetes leaves $(UNDEFINED) as literal text
                        problems.append(f"{where} {c['name']}: env {var['name']} uses $({ref}) before it is defined")
                defined[var["name"]] = secret
            for src in c.get("envFrom", []):
                if "secretRef" not in src and "configMapRef" not in src:
                    problems.append(f"{where} {c['name']}: envFrom {src}")
    return problems


def secret_refs(docs: list[Doc]) -> set[tuple[str, str]]:
    refs = set()
    for c in iter_containers(docs):
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
    return refs


def documented_secrets() -> set[tuple[str, str]]:
    """(secret, key) pairs created by the `kubectl create secret generic` commands in k8s/README.md."""
    text = (K8S / "README.md").read_text().replace("\\\n", " ")
    out = set()
    for line in text.splitlines():
        m = re.search(r"kubectl(?:\s+-n\s+\S+)?\s+create\s+secret\s+generic\s+(\S+)(.*)", line)
        if m:
            for key in re.findall(r"--from-literal=([A-Za-z0-9._-]+)=", m.group(2)):
                out.add((m.group(1), key))
    return out


def check_services_internal(docs: list[Doc]) -> list[str]:
    problems = []
    for svc in find(docs, "Service"):
        if svc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service/{svc['metadata']['name']}: type {svc['spec']['type']} exposes it")
    for label, spec in cluster_specs(docs):
        head = spec["headGroupSpec"]
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            problems.append(f"{label}: the Ray head Service must stay ClusterIP without ingress")
    if find(docs, "Ingress"):
        problems.append("an Ingress exposes a service")
    return problems


def check_mlflow_server(docs: list[Doc]) -> list[str]:
    """MLflow runs the launcher in production mode, with a /health readiness probe on its port."""
    problems = []
    pod = one(docs, "Deployment", "ctcae-mlflow")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    cmd = c.get("command", []) + c.get("args", [])
    script = next((a for a in cmd if a.endswith("serve.py")), None)
    if script is None or not (ROOT / script).is_file() or cmd[cmd.index("--mode") + 1] != "production":
        problems.append(f"MLflow container must run mlflow/serve.py --mode production, got {cmd}")
    probe = c.get("readinessProbe", {}).get("httpGet", {})
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if probe.get("path") != "/health" or probe.get("port") not in (*ports, *ports.values()):
        problems.append(f"MLflow readinessProbe must GET /health on its port, got {probe}")
    if int(env_value(c, "MLFLOW_PORT") or 5000) not in ports.values():
        problems.append("MLflow listens on a port the container does not declare")
    if not (env_value(c, "MLFLOW_ARTIFACTS_DESTINATION") or "").startswith("s3://"):
        problems.append("MLflow artifacts must go to the S3-compatible store")
    return problems


def check_rayjob_matches_raycluster(docs: list[Doc]) -> list[str]:
    """The job's cluster is the interactive one (a suspended interactive cluster is still the same)."""
    clusters, jobs = find(docs, "RayCluster"), find(docs, "RayJob")
    if len(clusters) == 1 and len(jobs) == 1:
        interactive = {k: v for k, v in clusters[0]["spec"].items() if k != "suspend"}
        if jobs[0]["spec"]["rayClusterSpec"] != interactive:
            return ["RayJob spec.rayClusterSpec differs from the interactive RayCluster spec"]
    return []


# -- pod security (restricted profile), least privilege, network, operations (issue 14) --------
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
WRITABLE_PATHS = {"/tmp"}  # every container; Ray containers also /tmp/ray (see check_pod_security)


def effective_security(pod: dict, container: dict) -> dict:
    """The container's security settings after the pod's defaults (container fields win)."""
    return {**pod.get("securityContext", {}), **container.get("securityContext", {})}


def security_problems(where: str, sec: dict) -> list[str]:
    """What the Pod Security "restricted" profile (plus a read-only root) refuses in `sec`."""
    problems = [f"{where}: securityContext.{k} must be {v}" for k, v in RESTRICTED_CONTAINER.items() if sec.get(k) is not v]
    if sec.get("runAsNonRoot") is not True or sec.get("runAsUser") == 0:
        problems.append(f"{where}: must run as non-root (runAsNonRoot: true)")
    if "ALL" not in sec.get("capabilities", {}).get("drop", []) or sec.get("capabilities", {}).get("add"):
        problems.append(f"{where}: capabilities must drop ALL and add none")
    if sec.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile must be RuntimeDefault")
    if sec.get("privileged"):
        problems.append(f"{where}: privileged")
    return problems


def check_pod_security(docs: list[Doc]) -> list[str]:
    """Every container of every pod template (and KubeRay's autoscaler sidecar) is restricted, with
    emptyDirs where it writes; every fsGroup pod skips the recursive chown; the namespace enforces
    the restricted Pod Security profile."""
    problems = []
    for label, _, pod in all_pods(docs):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        if "fsGroup" in pod.get("securityContext", {}) and pod["securityContext"].get("fsGroupChangePolicy") != "OnRootMismatch":
            problems.append(f"{label}: fsGroup without fsGroupChangePolicy: OnRootMismatch")
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            where = f"{label} {c['name']}"
            problems += security_problems(where, effective_security(pod, c))
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            ray_node = label.split()[-1].startswith(("head", "worker:"))
            needed = WRITABLE_PATHS | ({"/tmp/ray"} if ray_node else set())
            for path in sorted(needed):
                if "emptyDir" not in volumes.get(mounts.get(path, ""), {}):
                    problems.append(f"{where}: read-only root file system but no emptyDir at {path}")
            if "/tmp/ray" in mounts and mounts["/tmp/ray"] != "ray-logs":
                problems.append(f"{where}: /tmp/ray must be volume ray-logs (KubeRay mounts that name into its autoscaler)")
    for label, spec in cluster_specs(docs):
        auto = spec.get("autoscalerOptions", {})
        if spec.get("enableInTreeAutoscaling"):
            problems += security_problems(f"{label} autoscaler", auto.get("securityContext", {}))
    for ns in find(docs, "Namespace"):
        if ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
            problems.append(f"Namespace/{ns['metadata']['name']}: pod-security.kubernetes.io/enforce must be restricted")
    return problems


def _selects(selector: dict, labels: dict) -> bool:
    if set(selector) - {"matchLabels"}:
        raise ValueError(f"unsupported selector {selector}")  # matchExpressions: not used here
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def allowed_sources(docs: list[Doc], labels: dict) -> tuple[set[str], list[dict]]:
    """Who may open connections to a pod with `labels`: (pods of the build, peers outside the
    namespace as written). Without a policy selecting it, everyone."""
    pods = all_pods(docs)
    policies = [p for p in find(docs, "NetworkPolicy") if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and _selects(p["spec"]["podSelector"], labels)]  # fmt: skip
    if not policies:
        return {label for label, _, _ in pods}, [{"everyone": True}]
    inside: set[str] = set()
    outside: list[dict] = []
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", [{}]):
                if "namespaceSelector" in peer or "ipBlock" in peer or not peer:
                    outside.append({**peer, "ports": rule.get("ports")})
                    if peer:
                        continue
                inside |= {label for label, pod_labels, _ in pods if _selects(peer.get("podSelector", {}), pod_labels)}
    return inside, outside


def _component(label: str) -> str:
    """'Deployment/ctcae-mlflow' -> 'mlflow'; 'RayJob/x head' -> 'ray-head'; '... worker:gpu' -> 'ray-worker'."""
    if " head" in label:
        return "ray-head"
    if " worker:" in label:
        return "ray-worker"
    if " submitter" in label:
        return "ray-submitter"
    return label.split("/", 1)[1].removeprefix("ctcae-")


def check_network_policies(docs: list[Doc]) -> list[str]:
    """Every policy selects pods of the build; Postgres only from MLflow and the Ray heads, MinIO only
    from MLflow (and its setup Job), the Ray heads (dashboard = remote code execution) only from
    the namespace and the KubeRay operator's dashboard calls."""
    problems = []
    pods = all_pods(docs)
    for pol in find(docs, "NetworkPolicy"):
        where = f"NetworkPolicy/{pol['metadata']['name']}"
        selectors = [pol["spec"]["podSelector"]]
        selectors += [peer["podSelector"] for rule in pol["spec"].get("ingress", []) for peer in rule.get("from", [])
                      if "podSelector" in peer and "namespaceSelector" not in peer]  # fmt: skip
        for sel in selectors:
            if sel and not any(_selects(sel, labels) for _, labels, _ in pods):
                problems.append(f"{where}: selector {sel} matches no pod of the build")
    if not find(docs, "NetworkPolicy"):
        return ["no NetworkPolicy: every pod can reach Postgres, MinIO and the Ray dashboard"]
    expected = {"postgres": {"mlflow", "ray-head"}, "minio": {"mlflow", "minio-setup"}}
    for label, labels, _ in pods:
        inside, outside = allowed_sources(docs, labels)
        comp = _component(label)
        sources = {_component(s) for s in inside}
        if comp in expected:
            if sources != expected[comp] or outside:
                problems.append(f"{label}: reachable from {sorted(sources)} {outside or ''}, expected only {sorted(expected[comp])}")
        elif comp == "ray-head":
            for peer in outside:
                if peer.get("ipBlock") or not peer.get("namespaceSelector") or [p.get("port") for p in peer["ports"] or []] != [8265]:
                    problems.append(f"{label}: reachable from outside the namespace: {peer}")
    return problems


def check_least_privilege(docs: list[Doc]) -> list[str]:
    """Ray workers hold no credentials; the Postgres superuser and the MinIO root stay with Postgres,
    MinIO and the MinIO setup Job; MLflow, its auth database and Optuna use different roles."""
    problems = []
    owners = {"ctcae-postgres": {"postgres"}, "ctcae-minio": {"minio", "minio-setup"}}
    for label, _, pod in all_pods(docs):
        for c in pod.get("containers", []):
            refs = {v["valueFrom"]["secretKeyRef"]["name"] for v in c.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})}
            comp = _component(label)
            if comp == "ray-worker" and refs:
                problems.append(f"{label}: Ray workers never log to MLflow or open databases, yet get Secrets {sorted(refs)}")
            for secret, allowed in owners.items():
                if secret in refs and comp not in allowed:
                    problems.append(f"{label}: gets Secret {secret} (only {sorted(allowed)} may)")
    users: dict[str, set[str]] = {}
    for c in iter_containers(docs):
        for var in c.get("env", []):
            for user, _ in CREDENTIAL_URI_RE.findall(var.get("value", "")):
                db = urlsplit(URI_RE.search(var["value"]).group(0)).path.strip("/")
                users.setdefault(db, set()).add(user)
    for db, names in users.items():
        others = set().union(*(n for d, n in users.items() if d != db))
        if names & others:
            problems.append(f"database {db} shares a Postgres role {sorted(names & others)} with another database")
    return problems


def pinned_ray() -> str:
    return next(line.split("==", 1)[1] for line in CONSTRAINTS.read_text().splitlines() if line.startswith("ray=="))


def check_operations(docs: list[Doc]) -> list[str]:
    """Pinned third-party images, rayVersion = the image's Ray, token auth, a deadline and resuming on
    every RayJob, generated datasets on the shared volume."""
    problems = []
    for c in iter_containers(docs):
        name, ref = _split_image(c["image"])
        if name.split("/")[-1].startswith(PROJECT_IMAGE):
            continue
        if not (ref.startswith("@sha256:") or "@sha256:" in c["image"] or re.fullmatch(
                r":(\d+\.\d+[\w.-]*|RELEASE\.\d{4}-\d\d-\d\dT[\dZ-]+)", ref)):  # fmt: skip
            problems.append(f"container {c['name']}: image {c['image']} is not pinned (digest or an immutable version tag)")
    ray = pinned_ray()
    for label, spec in cluster_specs(docs):
        if spec.get("rayVersion") != ray:
            problems.append(f"{label}: rayVersion {spec.get('rayVersion')} != the image's pinned ray {ray}")
        if spec.get("authOptions", {}).get("mode") != "token":
            problems.append(f"{label}: authOptions.mode must be token (the dashboard runs any code it is sent)")
        for group, _, c in ray_groups(spec):
            cache = env_value(c, "CTCAE_DATA_CACHE") or ""
            if not cache.startswith("/mnt/ray-storage/"):
                problems.append(f"{label} {group}: CTCAE_DATA_CACHE={cache or None}, not on the shared volume")
    for job in find(docs, "RayJob"):
        if not job["spec"].get("activeDeadlineSeconds", 0) > 0:
            problems.append(f"RayJob/{job['metadata']['name']}: no activeDeadlineSeconds")
        if "--resume-if-exists" not in entrypoint_args(job):
            problems.append(f"RayJob/{job['metadata']['name']}: a re-submitted study must resume (--resume-if-exists)")
    return problems


def cross_checks(docs: list[Doc], production: bool = True) -> list[str]:
    """All cross-checks; `production` also requires a GPU group and a ReadWriteMany Ray volume."""
    problems: list[str] = []
    for check in (check_entrypoint, check_references, check_service_uris, check_databases, check_tracking_uri, check_same_image,
                  check_ray_topology, check_no_literal_credentials, check_services_internal,
                  check_mlflow_server, check_rayjob_matches_raycluster, check_pod_security, check_network_policies,
                  check_least_privilege, check_operations):  # fmt: skip
        problems += check(docs)
    problems += check_gpu_placement(docs, require_gpu_group=production)
    problems += check_ray_storage(docs, require_rwx=production)
    missing = secret_refs(docs) - documented_secrets()
    problems += [f"Secret {n} key {k} is referenced but k8s/README.md never creates it" for n, k in sorted(missing)]
    return problems


def all_checks(docs: list[Doc], production: bool = True) -> list[str]:
    return check_kuberay_schemas(docs) + check_core_kinds(docs, K8S_VERSIONS[-1]) + cross_checks(docs, production)


def is_production(name: str) -> bool:
    return name != "overlays/local"


# ----------------------------------------------------------------------------------------------
# Tests: structure
# ----------------------------------------------------------------------------------------------
def test_every_yaml_file_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, (dict, list)), f"{path}: not a mapping or list"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_files_exist_and_are_all_used(name: str) -> None:
    kdir = K8S / name
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    listed = {(kdir / r).resolve() for r in kust.get("resources", [])}
    listed |= {(kdir / p["path"]).resolve() for p in kust.get("patches", []) if "path" in p}
    for path in listed:
        assert path.exists(), f"{name}: {path} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), f"{path} has no kustomization.yaml"
    orphans = {p.resolve() for p in kdir.glob("*.yaml") if p.name != "kustomization.yaml"} - listed
    assert not orphans, f"{name}: manifests not listed in kustomization.yaml: {sorted(map(str, orphans))}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_build_has_the_platform(name: str) -> None:
    docs = built(name)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    for expected in [("Deployment", "ctcae-mlflow"), ("Service", "ctcae-mlflow"), ("StatefulSet", "ctcae-postgres"),
                     ("Service", "ctcae-postgres"), ("StatefulSet", "ctcae-minio"), ("Service", "ctcae-minio"),
                     ("PersistentVolumeClaim", "ctcae-ray-storage"), ("RayCluster", "ctcae"),
                     ("RayJob", "ctcae-search")]:  # fmt: skip
        assert expected in kinds, f"{name}: {expected} missing"
    assert len(set(kinds)) == len(kinds), f"{name}: duplicate resources"
    if name != "base":
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"ctcae"}
        assert one(docs, "Namespace")["metadata"]["name"] == "ctcae"
    assert len(project_image(docs)) == 1 and next(iter(project_image(docs))).split("/")[-1].startswith(PROJECT_IMAGE)


@pytest.mark.skipif(shutil.which("kubectl") is None and shutil.which("kustomize") is None,
                    reason="neither kubectl nor kustomize installed")  # fmt: skip
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_python_build_matches_kustomize(name: str) -> None:
    exe = shutil.which("kustomize")
    cmd = [exe, "build", str(K8S / name)] if exe else ["kubectl", "kustomize", str(K8S / name)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    key: Callable[[Doc], tuple] = lambda d: (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
    theirs = {key(d): d for d in yaml.safe_load_all(out) if d}
    ours = {key(d): d for d in built(name)}
    assert theirs.keys() == ours.keys()
    for k in ours:
        assert ours[k] == theirs[k], f"{name}: {k} differs from kustomize's build"


# ----------------------------------------------------------------------------------------------
# Tests: schemas
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_core_kinds_validate_strictly(name: str, version: str) -> None:
    docs = built(name)
    assert len([d for d in docs if not d["apiVersion"].startswith("ray.io")]) >= 8
    assert check_core_kinds(docs, version) == []


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kuberay_resources_validate_against_crd_schemas(name: str) -> None:
    assert check_kuberay_schemas(built(name)) == []


def test_schema_file_is_the_kuberay_crd_schema() -> None:
    """k8s/schemas/kuberay-v1.json, with its shared subtrees inlined, is exactly KubeRay's schema."""
    import importlib.util

    if not SHARED_CRDS.is_dir():
        pytest.skip(f"{SHARED_CRDS} not available")
    spec = importlib.util.spec_from_file_location("extract", K8S / "schemas" / "extract_kuberay_schemas.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for fname in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"):
        kind, original = mod.crd_schema(SHARED_CRDS / fname)
        assert mod.expand(KUBERAY[kind], KUBERAY["$defs"]) == original, kind


def test_strict_key_walk_allows_free_form_maps() -> None:
    job = one(built("overlays/gpu"), "RayJob")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["rayStartParams"]["any-ray-flag"] = "1"  # rayStartParams is a free string map
    head["template"]["metadata"]["labels"]["team"] = "vision"
    head["template"]["spec"]["containers"][0]["resources"]["limits"]["example.com/fpga"] = "1"
    assert check_kuberay_schemas([job]) == []


# ----------------------------------------------------------------------------------------------
# Tests: cross-checks on the real builds
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_cross_checks_pass(name: str) -> None:
    assert cross_checks(built(name), production=is_production(name)) == []


def test_entrypoint_runs_the_study_file_in_the_repository() -> None:
    """Fails until search/run.py and ablations/arch.yaml (the search issue) are in the repo."""
    for name in KUSTOMIZATIONS:
        assert check_entrypoint(built(name)) == [], name


def test_gpu_overlay_facts() -> None:
    docs = built("overlays/gpu")
    job = one(docs, "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == GPU_GROUP][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "1"
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] == 8
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert _flag(entrypoint_args(job), "--space") == "ablations/arch_gpu.yaml"
    assert project_image(docs) == {"registry.example.com/ctcae/ctcae:0.1.0"}
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert env_value(head, "CTCAE_OPTUNA_STORAGE") == (
        "postgresql+psycopg2://$(OPTUNA_DB_USER):$(OPTUNA_DB_PASSWORD)@ctcae-postgres:5432/optuna")
    init = one(docs, "ConfigMap", "ctcae-postgres-init")["data"]["10-roles-and-databases.sh"]
    for db, role in (("mlflow", "mlflow_user"), ("mlflow_auth", "auth_user"), ("optuna", "optuna_user")):
        assert f'CREATE DATABASE {db} OWNER :"{role}";' in init
    assert "REVOKE ALL ON DATABASE mlflow, mlflow_auth, optuna FROM PUBLIC" in init


def test_gpu_overlay_study_asks_for_gpus() -> None:
    """The study the GPU overlay runs uses its GPUs: one per trial, the paper's model and budget,
    and no more concurrent trials than GPU workers."""
    from search.space import load_study

    job = one(built("overlays/gpu"), "RayJob")
    study = load_study(ROOT / _flag(entrypoint_args(job), "--space"))
    assert study.resources.gpus_per_worker >= 1
    assert not study.profile.endswith("_small") and study.base.model.enc_channels == (128, 128, 256, 256, 256)
    assert study.base.train.steps == 50000
    gpu_group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert study.search.max_concurrent <= gpu_group["maxReplicas"]
    assert study.resources.cpus_per_worker <= int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert _flag(entrypoint_args(job), "--name") == study.name


def test_local_overlay_has_no_gpu_and_single_node_storage() -> None:
    docs = built("overlays/local")
    for _, spec in cluster_specs(docs):
        assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu"]
        assert all(not _gpu(c) for _, _, c in ray_groups(spec))
        assert "tolerations" not in spec["workerGroupSpecs"][0]["template"]["spec"]
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert project_image(docs) == {"ctcae:dev-cpu"}  # the CPU image variant (k8s/Dockerfile VARIANT=cpu)
    assert one(docs, "RayCluster")["spec"]["suspend"] is True


def _quantity(q: str | int) -> float:
    """Kubernetes memory quantity in GiB."""
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10}
    q = str(q)
    for unit, scale in units.items():
        if q.endswith(unit):
            return float(q[: -len(unit)]) * scale
    return float(q) / 2**30


def test_local_overlay_fits_an_8_gib_laptop_node() -> None:
    """Everything that runs at once (MLflow, Postgres, MinIO, the setup Job, the RayJob's head with
    its autoscaler, the submitter, every worker at maxReplicas) fits one kind/minikube node of 8 GiB
    (about 6 GiB allocatable after the system pods); the suspended RayCluster runs no pod."""
    docs = built("overlays/local")
    totals = {"requests": 0.0, "limits": 0.0}

    def add(resources: dict, times: int = 1) -> None:
        for kind in totals:
            totals[kind] += times * _quantity(resources.get(kind, resources.get("requests", {})).get("memory", 0))

    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            for c in d["spec"]["template"]["spec"]["containers"]:
                add(c["resources"], d["spec"].get("replicas", 1))
    clusters = [spec for _, spec in cluster_specs(docs) if not spec.get("suspend")]
    assert len(clusters) == 1
    for group, gspec, c in ray_groups(clusters[0]):
        add(c["resources"], 1 if group == "head" else gspec["maxReplicas"])
    add(clusters[0]["autoscalerOptions"]["resources"])
    add(one(docs, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["resources"])
    assert totals["requests"] <= 6.0, totals
    assert totals["limits"] <= 8.0, totals


def test_every_secret_reference_is_documented() -> None:
    refs = secret_refs(built("overlays/gpu"))
    assert {n for n, _ in refs} == {"ctcae-postgres", "ctcae-postgres-mlflow", "ctcae-postgres-mlflow-auth",
                                    "ctcae-postgres-optuna", "ctcae-minio", "ctcae-minio-mlflow", "ctcae-mlflow-auth"}
    assert refs <= documented_secrets()


def test_dockerfile() -> None:
    text = (K8S / "Dockerfile").read_text()
    cuda = re.search(r"ARG CUDA_VERSION=(\d+)\.(\d+)", text)
    assert cuda and re.search(r"^FROM docker\.io/nvidia/cuda:\$\{CUDA_VERSION\}-", text, re.M)
    index = re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu(\d+)$", text, re.M)
    assert index and index.group(1) == cuda.group(1) + cuda.group(2), "torch CUDA wheels must match the CUDA base"
    assert 'TORCH_SPEC="torch>=2.6,<2.15"' in text
    # every install is pinned by the constraints; mlflow[auth]: the basic-auth app
    installs = re.findall(r"^RUN uv pip install (.*)$", text, re.M)
    assert len(installs) == 3 and all("-c k8s/constraints.txt" in i for i in installs[:2]) and "--no-deps ." in installs[2]
    assert re.search(r'-r pyproject\.toml --extra search "mlflow\[auth\]"', text)
    workdir = re.search(r"^WORKDIR (\S+)", text, re.M).group(1)
    for _, spec in cluster_specs(built("overlays/gpu")):
        assert {c.get("workingDir") for _, _, c in ray_groups(spec)} == {workdir}
    assert re.search(r"^USER 1000$", text, re.M)
    assert not (ROOT / "mlflow" / "__init__.py").exists()


def test_dockerfile_installs_dependencies_before_the_source() -> None:
    """A code change must not reinstall torch and Ray: the source is copied after the dependency
    layers, which see only pyproject.toml, README.md and the constraints."""
    lines = (K8S / "Dockerfile").read_text().splitlines()
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ") and "--from" not in line]
    source = next(i for i in copies if lines[i].startswith("COPY . "))
    dep_installs = [i for i, line in enumerate(lines) if "uv pip install" in line and "--no-deps ." not in line]
    assert dep_installs and max(dep_installs) < source
    assert all(re.fullmatch(r"COPY (pyproject\.toml README\.md /app/|k8s/constraints\.txt /app/k8s/constraints\.txt)", lines[i])
               for i in copies if i < source)
    assert source > max(dep_installs) and any("--no-deps ." in line for line in lines[source:])


def test_dockerignore_keeps_local_results_out_of_the_image() -> None:
    """BuildKit reads k8s/Dockerfile.dockerignore for k8s/Dockerfile: local results, caches,
    databases and environments never reach the build context."""
    patterns = {ln.strip() for ln in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}  # fmt: skip
    for needed in (".git", "**/.venv", "**/ray_results", "runs", "**/.cache", "data", "**/mlruns", "**/mlflow-data",
                   "**/*.db", "**/__pycache__"):  # fmt: skip
        assert needed in patterns, needed
    assert not [p for p in patterns if p.startswith("!")]
    # nothing the image needs is excluded; local results are
    for path, excluded in (("pyproject.toml", False), ("README.md", False), ("k8s/constraints.txt", False),
                           ("search/run.py", False), ("ctcae_core/data/storage.py", False), ("mlflow/serve.py", False),
                           ("ablations/arch_gpu.yaml", False), ("data/tetrominoes/x.parquet", True),
                           ("ray_results/arch/optuna.db", True), ("sub/.venv/bin/python", True), ("mlflow.db", True)):
        assert any(_dockerignored(path, p) for p in patterns) is excluded, path


def _dockerignored(path: str, pattern: str) -> bool:
    """Docker's rule, for the patterns used: a path is out when it or a parent folder matches
    (``**/`` matches any number of leading folders)."""
    parts = Path(path).parts
    if pattern.startswith("**/"):
        return any(fnmatch.fnmatch("/".join(parts[i:j]), pattern[3:])
                   for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))  # fmt: skip
    return any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts)))


def test_dockerfile_cpu_variant() -> None:
    """VARIANT=cpu: a plain Ubuntu base and PyTorch's CPU wheels, checked at build time."""
    text = (K8S / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cuda$", text, re.M) and re.search(r"^FROM base-\$\{VARIANT\}$", text, re.M)
    assert re.search(r"^FROM docker\.io/library/ubuntu:22\.04 AS base-cpu$", text, re.M)
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "torch.version.cuda) == (os.environ['CTCAE_IMAGE_VARIANT'] == 'cuda')" in text
    assert "VARIANT=cpu" in (K8S / "overlays" / "local" / "kustomization.yaml").read_text()


def test_image_commit_reaches_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIT_COMMIT build arg -> env CTCAE_GIT_COMMIT + OCI revision label; without git (the image),
    search.tracking.git_commit reads the env var, which MLflow gets as ctcae.git_commit."""
    text = (K8S / "Dockerfile").read_text()
    assert re.search(r"^ARG GIT_COMMIT=unknown$", text, re.M)
    assert re.search(r"^ENV CTCAE_GIT_COMMIT=\$\{GIT_COMMIT\}$", text, re.M)
    assert re.search(r"^LABEL org\.opencontainers\.image\.revision=\$\{GIT_COMMIT\}", text, re.M)
    from search.tracking import git_commit

    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("CTCAE_GIT_COMMIT", sha)
    assert git_commit(tmp_path) == sha  # tmp_path is no git checkout
    monkeypatch.setenv("CTCAE_GIT_COMMIT", "not-a-sha")
    assert git_commit(tmp_path) == "unknown"
    monkeypatch.delenv("CTCAE_GIT_COMMIT")
    assert git_commit(tmp_path) == "unknown"
    assert len(git_commit(ROOT)) == 40 or not (ROOT / ".git").exists()  # git wins where it works


def test_rayversion_equals_the_pinned_ray() -> None:
    """The image installs k8s/constraints.txt's Ray; every RayCluster / RayJob declares exactly it,
    and it is the Ray the tests run with."""
    ray = pinned_ray()
    assert ray == importlib.metadata.version("ray")
    for name in KUSTOMIZATIONS:
        specs = cluster_specs(built(name))
        assert len(specs) == 2 and {spec["rayVersion"] for _, spec in specs} == {ray}, name


def test_constraints_are_the_tested_environment() -> None:
    """k8s/constraints.txt is what k8s/freeze_constraints.py writes from this environment: the
    project's dependency closure at the installed versions, without test tools or the project."""
    out = subprocess.run([sys.executable, str(K8S / "freeze_constraints.py"), "--check"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    pins = dict(line.split("==", 1) for line in CONSTRAINTS.read_text().splitlines() if "==" in line)
    for name in ("ray", "torch", "mlflow", "optuna", "numpy", "pyarrow", "psycopg2-binary", "boto3", "flask-wtf"):
        assert name in pins, name
    assert "ctcae" not in pins and "pytest" not in pins and "kubernetes-validate" not in pins
    assert "+" not in pins["torch"]  # the CUDA build of the same version must match
    assert pins["mlflow"] == importlib.metadata.version("mlflow")


def test_entrypoint_resumes_a_resubmitted_study() -> None:
    from search.run import parse_args

    for name in KUSTOMIZATIONS:
        args = entrypoint_args(one(built(name), "RayJob"))
        assert "--resume-if-exists" in args, name
        assert parse_args(args[2:]).resume_if_exists


RESUME_CASES = [  # (flags, Ray experiment exists, Optuna study exists) -> resume, or the error's words
    ([], False, False, False),
    ([], True, False, "already exists at"),
    ([], False, True, "Optuna study 'arch' already exists"),
    (["--resume"], True, True, True),
    (["--resume"], False, False, "no study 'arch' to resume"),
    (["--resume-if-exists"], False, False, False),
    (["--resume-if-exists"], True, True, True),
    (["--resume-if-exists"], True, False, True),
    (["--resume-if-exists"], False, True, "cannot be resumed"),
]


@pytest.mark.parametrize("flags,restorable,optuna_exists,expected", RESUME_CASES)
def test_resume_if_exists_decision(flags: list[str], restorable: bool, optuna_exists: bool, expected: bool | str) -> None:
    from search.run import parse_args, should_resume
    from search.space import StudyError

    args = parse_args(["--space", "ablations/arch.yaml", *flags])
    url = "postgresql+psycopg2://optuna:hunter2@ctcae-postgres:5432/optuna"
    call = lambda: should_resume(args, "arch", "/mnt/ray-storage/ctcae/arch", url, restorable, lambda: optuna_exists)  # noqa: E731
    if isinstance(expected, bool):
        assert call() is expected
    else:
        with pytest.raises(StudyError, match=re.escape(expected)) as err:
            call()
        assert "hunter2" not in str(err.value)


def test_resume_flags_exclude_each_other(capsys: pytest.CaptureFixture) -> None:
    from search.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--space", "ablations/arch.yaml", "--resume", "--resume-if-exists"])
    assert "not allowed with" in capsys.readouterr().err


def test_study_job_submits_another_study_beside_the_first() -> None:
    """k8s/study_job.py: the overlay's RayJob with a generated name and another study; it still
    passes the schema and the entrypoint checks."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_job", K8S / "study_job.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in ("overlays/gpu", "overlays/local"):
        job = mod.study_job(built(name), "ablations/contrastive_small.yaml", "contrastive_small")
        assert "name" not in job["metadata"] and job["metadata"]["generateName"] == "ctcae-contrastive-small-"
        args = entrypoint_args(job)
        assert _flag(args, "--space") == "ablations/contrastive_small.yaml" and _flag(args, "--name") == "contrastive_small"
        assert "--resume-if-exists" in args
        job["metadata"]["name"] = "x"  # what the API server fills in
        assert check_kuberay_schemas([job]) == [] and check_entrypoint([job]) == [] and check_operations([job]) == []
    with pytest.raises(ValueError, match="no such study file"):
        mod.study_job(built("overlays/gpu"), "ablations/nope.yaml", "nope")
    with pytest.raises(ValueError, match="--name"):
        mod.study_job(built("overlays/gpu"), "ablations/smoke.yaml", "Bad Name")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_is_restricted(name: str) -> None:
    """Non-root, no privilege escalation, capabilities dropped, RuntimeDefault seccomp, read-only
    root with emptyDirs, on every container of every pod template of the build."""
    docs = built(name)
    containers = [(label, c) for label, _, pod in all_pods(docs) for c in pod["containers"]]
    assert len(containers) >= 9  # mlflow, postgres, minio, mc, 2 x (head, worker), submitter
    assert check_pod_security(docs) == []


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_network_policy_selects_pods_of_the_build(name: str) -> None:
    docs = built(name)
    policies = find(docs, "NetworkPolicy")
    assert len(policies) >= 5
    pods = all_pods(docs)
    for pol in policies:
        sel = pol["spec"]["podSelector"]
        assert sel == {} or any(_selects(sel, labels) for _, labels, _ in pods), pol["metadata"]["name"]
    assert check_network_policies(docs) == []
    by_component = {_component(label): labels for label, labels, _ in pods}
    sources = lambda comp: {_component(s) for s in allowed_sources(docs, by_component[comp])[0]}  # noqa: E731
    assert sources("postgres") == {"mlflow", "ray-head"}
    assert sources("minio") == {"mlflow", "minio-setup"}
    assert "ray-worker" in sources("ray-head") and "ray-submitter" in sources("ray-head")


def test_kuberay_token_auth_is_in_the_crd_and_used() -> None:
    """The CRD offers authOptions.mode token (so it is used, not only documented)."""
    spec = _resolve(_resolve(KUBERAY["RayCluster"])["properties"]["spec"])
    assert "token" in _resolve(spec["properties"]["authOptions"])["properties"]["mode"]["enum"]
    for name in KUSTOMIZATIONS:
        assert {s.get("authOptions", {}).get("mode") for _, s in cluster_specs(built(name))} == {"token"}


# ----------------------------------------------------------------------------------------------
# Mutation tests: a broken copy of a built manifest must fail the checks
# ----------------------------------------------------------------------------------------------
def _job(docs: list[Doc]) -> dict:
    return one(docs, "RayJob")["spec"]


def _rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


def _env(container: dict, name: str) -> dict:
    return next(v for v in container["env"] if v["name"] == name)


def _mlflow(docs: list[Doc]) -> dict:
    return one(docs, "Deployment", "ctcae-mlflow")["spec"]["template"]["spec"]["containers"][0]


def _head(docs: list[Doc], kind: str = "RayJob") -> dict:
    spec = _job(docs)["rayClusterSpec"] if kind == "RayJob" else one(docs, "RayCluster")["spec"]
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def _worker(docs: list[Doc], kind: str = "RayJob") -> dict:
    spec = _job(docs)["rayClusterSpec"] if kind == "RayJob" else one(docs, "RayCluster")["spec"]
    return spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


TYPOS: dict[str, tuple[Callable[[list[Doc]], None], str]] = {  # name -> (mutation, misspelled key)
    "workerGroupSpecs": (lambda docs: _rename(_job(docs)["rayClusterSpec"], "workerGroupSpecs", "workerGroupSpec"),
                         "workerGroupSpec"),
    "rayStartParams": (lambda docs: _rename(_job(docs)["rayClusterSpec"]["headGroupSpec"], "rayStartParams",
                                            "rayStartParam"), "rayStartParam"),
    "maxReplicas": (lambda docs: _rename(_job(docs)["rayClusterSpec"]["workerGroupSpecs"][0], "maxReplicas",
                                         "maxReplica"), "maxReplica"),
    "volumeMounts": (lambda docs: _rename(_worker(docs), "volumeMounts", "volumeMount"), "volumeMount"),
    "shutdownAfterJobFinishes": (lambda docs: _rename(_job(docs), "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
                                 "shutdownAfterJobFinish"),
    "metadata.labels": (lambda docs: _rename(one(docs, "RayCluster")["metadata"], "labels", "label"), "label"),
    "autoscalerOptions": (lambda docs: _rename(one(docs, "RayCluster")["spec"]["autoscalerOptions"],
                                               "idleTimeoutSeconds", "idleTimeoutSecond"), "idleTimeoutSecond"),
    "deployment env": (lambda docs: _rename(_mlflow(docs), "env", "evn"), "evn"),
}  # fmt: skip


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_typo_is_caught(typo: str) -> None:
    docs = built("overlays/gpu")
    assert all_checks(docs) == []
    mutate, misspelled = TYPOS[typo]
    mutate(docs)
    problems = all_checks(docs)
    assert any(p.endswith("/" + misspelled) or f"'{misspelled}' was unexpected" in p for p in problems), problems


def test_missing_group_name_is_caught() -> None:
    docs = built("overlays/gpu")
    del _job(docs)["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    problems = check_kuberay_schemas(docs)
    assert any("'groupName' is a required property" in p for p in problems), problems


def test_gpu_on_head_is_caught() -> None:
    docs = built("overlays/gpu")
    head = _job(docs)["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["resources"]["limits"][GPU_RESOURCE] = "1"
    assert check_kuberay_schemas(docs) == []  # the schema is fine with it; the cross-check is not
    problems = cross_checks(docs)
    assert any("head" in p and GPU_RESOURCE in p for p in problems), problems


MUTATIONS: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "head takes CPUs": (lambda docs: _job(docs)["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].pop("num-cpus"),
                        "num-cpus"),
    "workers never scale to zero": (
        lambda docs: _job(docs)["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=1), "minReplicas"),
    "autoscaler off": (lambda docs: _job(docs)["rayClusterSpec"].update(enableInTreeAutoscaling=False),
                       "enableInTreeAutoscaling"),
    "no GPU on the GPU group": (lambda docs: _job(docs)["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
                                ["containers"][0]["resources"]["limits"].pop(GPU_RESOURCE), "no nvidia.com/gpu limit"),
    "study file missing": (lambda docs: _job(docs).update(entrypoint=_job(docs)["entrypoint"].replace(
        "ablations/arch_gpu.yaml", "ablations/archh.yaml")), "ablations/archh.yaml"),
    "tracking port wrong": (lambda docs: _env(_worker(docs), "MLFLOW_TRACKING_URI").update(
        value="http://ctcae-mlflow:5001"), "MLFLOW_TRACKING_URI"),
    "tracking host wrong": (lambda docs: _env(_head(docs, "RayCluster"), "MLFLOW_TRACKING_URI").update(
        value="http://mlflow:5000"), "no Service named mlflow"),
    "second image": (lambda docs: _worker(docs, "RayCluster").update(image="rayproject/ray:2.60.0-gpu"),
                     "project image"),
    "literal password in URI": (lambda docs: _env(_head(docs, "RayCluster"), "CTCAE_OPTUNA_STORAGE").update(
        value="postgresql+psycopg2://ctcae:hunter2@ctcae-postgres:5432/optuna"), "literal credential"),
    "literal password env": (lambda docs: _mlflow(docs)["env"].append({"name": "DB_PASSWORD", "value": "hunter2"}),
                             "secretKeyRef"),
    "Secret in manifests": (lambda docs: docs.append({"apiVersion": "v1", "kind": "Secret",
                                                      "metadata": {"name": "x"}, "stringData": {"a": "b"}}),
                            "Secrets must not be in manifests"),
    "undefined env reference": (lambda docs: _mlflow(docs)["env"].insert(0, {
        "name": "X_URI", "value": "postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@ctcae-postgres:5432/mlflow"}),
        "before it is defined"),
    "LoadBalancer": (lambda docs: one(docs, "Service", "ctcae-mlflow")["spec"].update(type="LoadBalancer"),
                     "LoadBalancer"),
    "head NodePort": (lambda docs: _job(docs)["rayClusterSpec"]["headGroupSpec"].update(serviceType="NodePort"),
                      "ClusterIP"),
    "allowed hosts miss the Service": (lambda docs: _env(_mlflow(docs), "MLFLOW_ALLOWED_HOSTS").update(
        value="localhost:*"), "allowed-hosts"),
    "undocumented secret": (lambda docs: _env(_mlflow(docs), "MLFLOW_DB_PASSWORD")["valueFrom"]["secretKeyRef"].update(
        key="pw"), "never creates it"),
    "storage not shared": (lambda docs: _worker(docs).pop("volumeMounts"), "--storage"),
    "mlflow probe wrong path": (lambda docs: _mlflow(docs)["readinessProbe"]["httpGet"].update(path="/"), "/health"),
    "mlflow not in production": (lambda docs: _mlflow(docs).update(command=["python", "mlflow/serve.py", "--mode",
                                                                            "local"]), "--mode production"),
    "database never created": (lambda docs: one(docs, "ConfigMap", "ctcae-postgres-init").update(
        data={"10-roles-and-databases.sh": "CREATE DATABASE mlflow_auth;\n"}), "'optuna' is never created"),
    "missing ConfigMap": (lambda docs: docs.remove(one(docs, "ConfigMap", "ctcae-postgres-init")),
                          "missing ConfigMap ctcae-postgres-init"),
    "mount without volume": (lambda docs: _head(docs)["volumeMounts"].append({"name": "cache", "mountPath": "/c"}),
                             "volumeMount cache has no volume"),
    "service selects nothing": (lambda docs: one(docs, "Service", "ctcae-minio")["spec"]["selector"].update(
        {"app.kubernetes.io/name": "minio"}), "matches no pod"),
    "service port mismatch": (lambda docs: one(docs, "Service", "ctcae-postgres")["spec"]["ports"][0].update(
        port=5433), "no port 5432"),
    "RayJob drifts from RayCluster": (lambda docs: _job(docs)["rayClusterSpec"]["workerGroupSpecs"][0].update(
        maxReplicas=3), "differs"),
    # issue 14: pod security, network, least privilege, operations
    "root container": (lambda docs: _mlflow(docs)["securityContext"].update(runAsNonRoot=False), "non-root"),
    "privilege escalation": (lambda docs: _worker(docs)["securityContext"].pop("allowPrivilegeEscalation"),
                             "allowPrivilegeEscalation"),
    "capability kept": (lambda docs: _head(docs)["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
                        "drop ALL"),
    "no seccomp": (lambda docs: one(docs, "StatefulSet", "ctcae-postgres")["spec"]["template"]["spec"]["securityContext"]
                   .pop("seccompProfile"), "seccompProfile"),
    "writable root": (lambda docs: _job(docs)["submitterPodTemplate"]["spec"]["containers"][0]["securityContext"]
                      .update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    "no /tmp/ray emptyDir": (lambda docs: _worker(docs, "RayCluster")["volumeMounts"].pop(3), "no emptyDir at /tmp/ray"),
    "autoscaler unrestricted": (lambda docs: _job(docs)["rayClusterSpec"]["autoscalerOptions"].pop("securityContext"),
                                "autoscaler"),
    "recursive chown": (lambda docs: one(docs, "StatefulSet", "ctcae-minio")["spec"]["template"]["spec"]
                        ["securityContext"].pop("fsGroupChangePolicy"), "OnRootMismatch"),
    "namespace not restricted": (lambda docs: one(docs, "Namespace")["metadata"]["labels"].update(
        {"pod-security.kubernetes.io/enforce": "baseline"}), "enforce must be restricted"),
    "policy selects nothing": (lambda docs: one(docs, "NetworkPolicy", "ctcae-minio-ingress")["spec"]["podSelector"]
                               ["matchLabels"].update({"app.kubernetes.io/name": "minio"}), "matches no pod"),
    "workers reach Postgres": (lambda docs: one(docs, "NetworkPolicy", "ctcae-postgres-ingress")["spec"]["ingress"][0]
                               ["from"].append({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ctcae-ray"}}}),
                               "expected only ['mlflow', 'ray-head']"),
    "Ray head reaches MinIO": (lambda docs: one(docs, "NetworkPolicy", "ctcae-minio-ingress")["spec"]["ingress"][0]
                               ["from"].append({"podSelector": {"matchLabels": {"app.kubernetes.io/component": "ray-head"}}}),
                               "expected only ['minio-setup', 'mlflow']"),
    "dashboard open to all": (lambda docs: one(docs, "NetworkPolicy", "ctcae-ray-head-ingress")["spec"]["ingress"].append(
        {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}), "reachable from outside the namespace"),
    "no network policies": (lambda docs: [docs.remove(p) for p in find(docs, "NetworkPolicy")], "no NetworkPolicy"),
    "workers get MLflow admin": (lambda docs: _worker(docs)["env"].append(
        {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "ctcae-mlflow-auth",
                                                                             "key": "admin-password"}}}),
        "Ray workers never log"),
    "MLflow as Postgres superuser": (lambda docs: _env(_mlflow(docs), "MLFLOW_DB_PASSWORD")["valueFrom"]["secretKeyRef"]
                                     .update(name="ctcae-postgres"), "gets Secret ctcae-postgres"),
    "shared Postgres role": (lambda docs: _env(_head(docs), "CTCAE_OPTUNA_STORAGE").update(
        value="postgresql+psycopg2://$(MLFLOW_DB_USER):$(OPTUNA_DB_PASSWORD)@ctcae-postgres:5432/optuna"),
        "shares a Postgres role"),
    "floating postgres tag": (lambda docs: one(docs, "StatefulSet", "ctcae-postgres")["spec"]["template"]["spec"]
                              ["containers"][0].update(image="docker.io/library/postgres:16-alpine"), "not pinned"),
    "rayVersion drifts": (lambda docs: _job(docs)["rayClusterSpec"].update(rayVersion="2.59.0"), "pinned ray"),
    "no token auth": (lambda docs: one(docs, "RayCluster")["spec"].pop("authOptions"), "authOptions.mode"),
    "no deadline": (lambda docs: _job(docs).pop("activeDeadlineSeconds"), "activeDeadlineSeconds"),
    "no resume": (lambda docs: _job(docs).update(entrypoint=_job(docs)["entrypoint"].replace(" --resume-if-exists", "")),
                  "--resume-if-exists"),
    "data cache per pod": (lambda docs: _env(_worker(docs), "CTCAE_DATA_CACHE").update(value="/tmp/cache"),
                           "not on the shared volume"),
}  # fmt: skip


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutation_is_caught(mutation: str) -> None:
    docs = built("overlays/gpu")
    mutate, expected = MUTATIONS[mutation]
    mutate(docs)
    problems = all_checks(docs)
    assert any(expected in p for p in problems), f"{mutation}: {problems}"
