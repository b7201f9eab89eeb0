"""What the KubeRay operator accepts, checked offline: the CRD schema and the operator's own semantic rules.

Two layers, as on a real cluster:

- ``check_crd_schema``: the API server validates a custom resource against the CRD's OpenAPI v3 schema
  (tests/data/kuberay/, KubeRay v1.5.1). ``kubectl apply`` asks for strict field validation, so a field the schema
  does not list is an error, not silently pruned; the schema is made strict the same way before validating.
- ``check_raycluster_spec`` / ``check_rayjob``: what the operator itself refuses after the object was stored
  (the RayCluster gets an ``InvalidRayClusterSpec`` event and no pod; the RayJob fails). These restate, rule by
  rule, ``ValidateRayClusterSpec``, ``ValidateRayJobSpec`` and the metadata checks of
  ``ray-operator/controllers/ray/utils/validation.go`` as of KubeRay v1.5.1, plus the worker-group rules that
  v1.6.0 added (marked so). Feature-gated rules (suspended worker groups, deletion strategies) are left out:
  the manifests use neither.

Each check returns every problem it finds (the operator stops at the first), as a list of strings.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent / "data" / "kuberay"
KUBERAY_SCHEMA_VERSION = "v1.5.1"

# ray-operator/controllers/ray/utils/constant.go
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
FT_ANNOTATION = "ray.io/ft-enabled"
EXTERNAL_STORAGE_NS_ANNOTATION = "ray.io/external-storage-namespace"
AUTOSCALER_V2_ENV = "RAY_enable_autoscaler_v2"
MIN_RAY_FOR_TOKEN_AUTH = (2, 52, 0)

# k8s.io/apimachinery/pkg/util/validation
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Problems = list[str]


# ---------------------------------------------------------------- the CRD schema


def _strict(node: Any) -> Any:
    """The schema with unknown fields rejected wherever Kubernetes would reject them under strict validation."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


@cache
def spec_schema(kind: str) -> dict[str, Any]:
    """The strict OpenAPI v3 schema of ``spec`` of a RayCluster or RayJob (KubeRay's CRD, ray.io/v1)."""
    raw = json.loads((SCHEMA_DIR / f"{kind.lower()}-spec.{KUBERAY_SCHEMA_VERSION}.schema.json").read_text())
    return _strict(raw)


def check_crd_schema(doc: dict[str, Any]) -> Problems:
    """``doc['spec']`` against the CRD schema of ``doc['kind']``: types, enums, required fields, unknown fields."""
    validator = jsonschema.Draft7Validator(spec_schema(doc["kind"]))
    return [
        f"CRD schema: {err.message} at spec/{'/'.join(str(p) for p in err.absolute_path)}"
        for err in sorted(validator.iter_errors(doc.get("spec")), key=lambda e: list(map(str, e.absolute_path)))
    ]


# ---------------------------------------------------------------- Kubernetes name and label syntax


def qualified_name_problems(key: str) -> Problems:
    """``IsQualifiedName``: an optional DNS-1123 subdomain prefix and '/', then a name of at most 63 characters."""
    prefix, slash, name = key.rpartition("/")
    problems = []
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        problems.append(f"prefix {prefix!r} is not a DNS-1123 subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        problems.append(f"name {name!r} is not 1-63 alphanumerics, '-', '_' or '.', alphanumeric at both ends")
    return problems


def label_value_problems(value: Any) -> Problems:
    """``IsValidLabelValue``: empty, or at most 63 alphanumerics, '-', '_', '.', alphanumeric at both ends."""
    if not isinstance(value, str):
        return [f"value {value!r} is not a string"]
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return [f"value {value!r} is not a valid label value"]
    return []


def check_name(doc: dict[str, Any], max_length: int) -> Problems:
    """``ValidateRayClusterMetadata`` / ``ValidateRayJobMetadata``: a DNS-1035 label of bounded length."""
    name = str((doc.get("metadata") or {}).get("name", ""))
    problems = []
    if len(name) > max_length:
        problems.append(f"{doc.get('kind')} name {name!r} is longer than {max_length} characters")
    if len(name) > 63 or not _DNS1035_LABEL.match(name):
        problems.append(f"{doc.get('kind')} name {name!r} is not a DNS-1035 label")
    return problems


# ---------------------------------------------------------------- ValidateRayClusterSpec


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e.get("name"): e for e in container.get("env") or []}


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def _ray_version(text: Any) -> tuple[int, ...] | None:
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", str(text or ""))
    return tuple(int(g or 0) for g in match.groups()) if match else None


def _group_problems(name: str, group: dict[str, Any]) -> Problems:
    """``validateRayGroupResources`` and ``validateRayGroupLabels`` for one head or worker group."""
    params = group.get("rayStartParams") or {}
    problems = []
    if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
        problems.append(f"{name}: resources set in both rayStartParams and the group's resources field")
    if "labels" in params:
        problems.append(
            f"{name}: rayStartParams['labels'] is not supported (KubeRay >= 1.5); use the group's top-level labels"
        )
    for key, value in (group.get("labels") or {}).items():
        problems.extend(f"{name}: invalid label key {key!r}: {p}" for p in qualified_name_problems(str(key)))
        problems.extend(f"{name}: invalid label value for {key!r}: {p}" for p in label_value_problems(value))
    return problems


def check_raycluster_spec(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> Problems:
    """Every rule of KubeRay's ``ValidateRayClusterSpec`` that applies to a spec without feature gates."""
    annotations = annotations or {}
    head = spec.get("headGroupSpec") or {}
    workers = spec.get("workerGroupSpecs") or []
    problems: Problems = []

    head_containers = _containers(head)
    if not head_containers:
        return ["headGroupSpec should have at least one container"]
    head_container = head_containers[0]  # KubeRay's Ray container is the first one
    head_env = _env(head_container)
    problems += _group_problems("head group", head)

    autoscaling = spec.get("enableInTreeAutoscaling") is True
    autoscaler = spec.get("autoscalerOptions") or {}
    autoscaler_v2 = autoscaling and autoscaler.get("version") == "v2"
    for group in workers:
        name = f"worker group {group.get('groupName')!r}"
        if not _containers(group):
            problems.append(f"{name} should have at least one container")
        problems += _group_problems(name, group)
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (lo is None or hi is None):  # KubeRay >= 1.6
            problems.append(f"{name} must set both minReplicas and maxReplicas when autoscaling is disabled")
        for field, value in (("minReplicas", lo), ("maxReplicas", hi)):  # KubeRay >= 1.6
            if value is not None and value < 0:
                problems.append(f"{name} has negative {field} {value}")
        if lo is not None and hi is not None and lo > hi:  # KubeRay >= 1.6
            problems.append(f"{name} has minReplicas {lo} greater than maxReplicas {hi}")
        idle = group.get("idleTimeoutSeconds")
        if idle is not None:  # KubeRay >= 1.6
            env_v2 = str((head_env.get(AUTOSCALER_V2_ENV) or {}).get("value")) in ("1", "true")
            if idle < 0:
                problems.append(f"{name}: idleTimeoutSeconds must be non-negative")
            elif not (autoscaler.get("version") == "v2" or env_v2):
                problems.append(f"{name}: idleTimeoutSeconds is set, but autoscaler v2 is not enabled")
        if autoscaling and group.get("suspend"):
            problems.append(f"{name} cannot be suspended with the autoscaler enabled")

    gcs_ft = spec.get("gcsFaultToleranceOptions")
    if annotations.get(FT_ANNOTATION) and gcs_ft is not None:
        problems.append(f"{FT_ANNOTATION} annotation and gcsFaultToleranceOptions are both set")
    ft_enabled = gcs_ft is not None or str(annotations.get(FT_ANNOTATION, "")).lower() == "true"
    if not ft_enabled and "RAY_REDIS_ADDRESS" in head_env:
        problems.append("RAY_REDIS_ADDRESS in the head container enables GCS FT without gcsFaultToleranceOptions")
    if gcs_ft is not None:
        if (head.get("rayStartParams") or {}).get("redis-password"):
            problems.append("redis-password in rayStartParams with gcsFaultToleranceOptions: use its redisPassword")
        if "REDIS_PASSWORD" in head_env:
            problems.append("REDIS_PASSWORD env in the head container with gcsFaultToleranceOptions")
        if "RAY_REDIS_ADDRESS" in head_env:
            problems.append("RAY_REDIS_ADDRESS env in the head container with gcsFaultToleranceOptions")
        if annotations.get(EXTERNAL_STORAGE_NS_ANNOTATION):
            problems.append(f"{EXTERNAL_STORAGE_NS_ANNOTATION} annotation with gcsFaultToleranceOptions")
    if (head.get("rayStartParams") or {}).get("redis-username") or "REDIS_USERNAME" in head_env:
        problems.append("redis username in rayStartParams or env: use gcsFaultToleranceOptions.redisUsername")

    v2_env = head_env.get(AUTOSCALER_V2_ENV)
    if not autoscaling and v2_env is not None and str(v2_env.get("value")) in ("1", "true"):
        problems.append(f"{AUTOSCALER_V2_ENV}={v2_env.get('value')} while enableInTreeAutoscaling is off")
    if autoscaling:
        if autoscaler.get("version") is not None and v2_env is not None:
            problems.append(f"both autoscalerOptions.version and the head's {AUTOSCALER_V2_ENV} env are set")
        if autoscaler_v2:
            for name, group in [("head", head)] + [(str(g.get("groupName")), g) for g in workers]:
                policy = ((group.get("template") or {}).get("spec") or {}).get("restartPolicy")
                if policy not in (None, "", "Never"):
                    problems.append(f"restartPolicy of {name} pods is {policy!r}: autoscaler v2 needs Never or unset")

    if (spec.get("authOptions") or {}).get("mode") == "token":
        version = _ray_version(spec.get("rayVersion"))
        if not spec.get("rayVersion"):
            problems.append("authOptions.mode is 'token' but rayVersion is not set")
        elif version is None:
            problems.append(f"authOptions.mode is 'token' but rayVersion {spec.get('rayVersion')!r} does not parse")
        elif version < MIN_RAY_FOR_TOKEN_AUTH:
            problems.append(f"authOptions.mode is 'token' but Ray {spec.get('rayVersion')} is older than 2.52.0")
    return problems


def check_raycluster(doc: dict[str, Any]) -> Problems:
    """A RayCluster object: its name, then its spec with its annotations."""
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    return check_name(doc, MAX_RAYCLUSTER_NAME) + check_raycluster_spec(doc.get("spec") or {}, annotations)


# ---------------------------------------------------------------- ValidateRayJobSpec


def check_rayjob(doc: dict[str, Any]) -> Problems:
    """A RayJob object: its name and the rules of ``ValidateRayJobSpec`` (its inline RayCluster spec included)."""
    spec = doc.get("spec") or {}
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    problems = check_name(doc, MAX_RAYJOB_NAME)
    shutdown = spec.get("shutdownAfterJobFinishes") is True
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    selector = spec.get("clusterSelector") or {}
    mode = spec.get("submissionMode", "K8sJobMode")
    if spec.get("suspend") and not shutdown:
        problems.append("a RayJob with shutdownAfterJobFinishes false cannot be suspended")
    if ttl < 0:
        problems.append("ttlSecondsAfterFinished must be non-negative")
    if not shutdown and ttl > 0:
        problems.append("ttlSecondsAfterFinished is set but shutdownAfterJobFinishes is false")
    if spec.get("suspend") and selector:
        problems.append("the clusterSelector mode cannot be suspended")
    if spec.get("rayClusterSpec") is None and not selector:
        problems.append("one of rayClusterSpec or clusterSelector must be set")
    if mode == "InteractiveMode" and (spec.get("backoffLimit") or 0) > 0:
        problems.append("backoffLimit is incompatible with InteractiveMode")
    if spec.get("rayClusterSpec") is not None:
        problems += [f"rayClusterSpec: {p}" for p in check_raycluster_spec(spec["rayClusterSpec"], annotations)]
    try:
        yaml.safe_load(spec.get("runtimeEnvYAML") or "")
    except yaml.YAMLError as exc:
        problems.append(f"runtimeEnvYAML is not YAML: {str(exc).splitlines()[0]}")
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and deadline <= 0:
        problems.append("activeDeadlineSeconds must be a positive integer")
    if spec.get("backoffLimit") is not None and spec["backoffLimit"] < 0:
        problems.append("backoffLimit must be non-negative")
    return problems
