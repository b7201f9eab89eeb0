"""The cluster manifests agree with configs/cluster.yaml and are what their tools accept (fast: no Kubernetes, no Ray
cluster, no cloud).

Each rule is a small ``check_*`` helper that returns a list of problems (empty = fine). The real files must
pass every helper, and every helper is also run on a deliberately broken copy to show that it can fail. What the
KubeRay operator accepts (its CRD schema and its own semantic rules) lives in tests/kuberay_rules.py.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from kuberay_rules import check_crd_schema, check_raycluster, check_rayjob
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cmd_ray.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO / "cluster"
CLUSTER_CONFIG = REPO / "configs" / "cluster.yaml"
RAYCLUSTER = CLUSTER_DIR / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER_DIR / "kuberay" / "rayjob.yaml"
AWS_LAUNCHER = CLUSTER_DIR / "aws" / "cluster.yaml"
MLFLOW_MANIFEST = CLUSTER_DIR / "kuberay" / "mlflow.yaml"
DOCKERFILE = CLUSTER_DIR / "Dockerfile"
START_HEAD = CLUSTER_DIR / "local" / "start-head.sh"
STOP = CLUSTER_DIR / "local" / "stop.sh"
PYPROJECT = REPO / "pyproject.toml"
LOCK = REPO / "requirements.lock"
TEST_LOCK = REPO / "requirements-test.lock"
LOCK_SCRIPT = CLUSTER_DIR / "lock.sh"

PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
# Images carry the project version, never a moving tag; a versioned tag is pulled only when a node lacks it.
IMAGE = f"cmd-ray:{PROJECT['version']}"
PULL_POLICY = "IfNotPresent"
GPU_GROUP = "gpu-train"
CPU_GROUP = "cpu-data"
AWS_GPU_TYPE = "gpu_train"
AWS_CPU_TYPE = "cpu_data"
# Ray Data's read tasks (ray.data.range) need a CPU slot beside the fixed pool of SampleMaker actors.
DATA_READ_HEADROOM_CPUS = 1.0
# Ray's default object store takes at most 95% of /dev/shm; an explicit size keeps the same margin.
SHM_SHARE_FOR_OBJECT_STORE = 0.95
# /dev/shm is memory: a memory-backed emptyDir counts against the pod's limit, docker's --shm-size against the host.
MAX_SHM_SHARE_OF_MEMORY = 0.5
# Memory of the EC2 instance types that cluster/aws/cluster.yaml uses (GiB).
INSTANCE_MEMORY_GIB = {"m6i.xlarge": 16, "m6i.2xlarge": 32, "g5.xlarge": 16}
SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
# Container variables whose name says they hold a secret (a *_PATH or *_FILE names where one is, not the secret).
SECRET_ENV_NAME = re.compile(r"(?i)(password|secret|token)(?!.*_(path|file)$)")
# The password of a URI's user-info (scheme://user:password@host); references ($(VAR), $VAR, <placeholder>) pass.
URI_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]*:([^@\s/'\"]+)@")
PASSWORD_REFERENCE = re.compile(r"\$\(\w+\)|\$\{?\w+\}?|<[^>]*>")
K8S_VAR = re.compile(r"\$\((\w+)\)")
# Mapping keys naming a secret (a path such as file_mounts' "~/.ray/auth_token" is not one).
SECRET_KEY_PATTERN = re.compile(r"(?i)^[\w-]*(secret_access_key|session_token|access_key_id|password|auth_token)$")
LITERAL_SECRET_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
)

Problems = list[str]


# ---------------------------------------------------------------- reading


def load_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> dict[str, Any]:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path} should hold one YAML document, holds {len(docs)}"
    return docs[0]


def cpu_quantity(value: Any) -> float:
    """Kubernetes CPU quantity ('4', '500m', 4, 2.5) in cores."""
    text = str(value).strip()
    return float(text[:-1]) / 1000.0 if text.endswith("m") else float(text)


def count_quantity(value: Any) -> int:
    """An extended-resource quantity such as nvidia.com/gpu ('1' or 1)."""
    return int(str(value).strip())


def group_by_name(spec: dict[str, Any], name: str) -> dict[str, Any] | None:
    for group in spec.get("workerGroupSpecs") or []:
        if group.get("groupName") == name:
            return group
    return None


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """The Ray container of a head/worker group (KubeRay runs Ray in the first container)."""
    return group["template"]["spec"]["containers"][0]


def containers(doc: Any) -> list[dict[str, Any]]:
    """Every container spec anywhere in a manifest."""
    found: list[dict[str, Any]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found.extend(c for c in value if isinstance(c, dict))
            else:
                found.extend(containers(value))
    elif isinstance(doc, list):
        for item in doc:
            found.extend(containers(item))
    return found


def logical_cpus(group: dict[str, Any]) -> float:
    """CPUs the Ray node advertises: rayStartParams num-cpus, else KubeRay's default, the container CPU limit."""
    params = group.get("rayStartParams") or {}
    if "num-cpus" in params:
        return float(params["num-cpus"])
    return cpu_quantity(ray_container(group)["resources"]["limits"]["cpu"])


def min_replicas(group: dict[str, Any]) -> int:
    """Replicas that exist from the start: the smaller of replicas and minReplicas."""
    values = [int(group[k]) for k in ("replicas", "minReplicas") if k in group]
    return min(values) if values else 0


def max_replicas(group: dict[str, Any]) -> int:
    """Replicas the autoscaler may create (KubeRay's default maxReplicas is unbounded; ours always set it)."""
    return int(group.get("maxReplicas", 0))


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_DOCKER = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def memory_quantity(value: Any) -> int:
    """A Kubernetes memory quantity ('9Gi', '512Mi', '1G', 8589934592) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i|[kMGTPE])?", str(value).strip())
    if not match:
        raise ValueError(f"not a memory quantity: {value!r}")
    number, unit = match.groups()
    return int(float(number) * (_BINARY.get(unit or "") or _DECIMAL.get(unit or "") or 1))


def docker_size(value: str) -> int:
    """docker's --shm-size ('9g', '512m', '1073741824') in bytes (binary units, as docker reads them)."""
    match = re.fullmatch(r"(\d+)([bkmg])?", value.strip().lower())
    if not match:
        raise ValueError(f"not a docker size: {value!r}")
    return int(match.group(1)) * _DOCKER[match.group(2) or "b"]


def option_values(options: list[str], flag: str) -> list[str]:
    """Values of ``flag`` in command-line fragments: ``--flag=value`` and ``--flag value`` both count."""
    values = []
    for option in options:
        argv = shlex.split(option)
        for i, arg in enumerate(argv):
            if arg.startswith(flag + "="):
                values.append(arg.split("=", 1)[1])
            elif arg == flag and i + 1 < len(argv):
                values.append(argv[i + 1])
    return values


def argv_options(argv: list[str], flag: str) -> list[str]:
    """Values of ``flag`` in one argument vector (a container's ``command``), ``--flag=v`` or ``--flag v``."""
    return option_values([shlex.join(str(a) for a in argv)], flag)


def rayjob_entrypoint(rayjob: dict[str, Any]) -> tuple[str, str | None]:
    """(script, --config value) of the RayJob entrypoint ``python SCRIPT --config FILE …``."""
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    script = next((a for a in argv[1:] if a.endswith(".py")), "")
    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    return script, config


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


# ---------------------------------------------------------------- checks


def check_kind(doc: dict[str, Any], kind: str) -> Problems:
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion is {doc.get('apiVersion')!r}, expected 'ray.io/v1'")
    if doc.get("kind") != kind:
        problems.append(f"kind is {doc.get('kind')!r}, expected {kind!r}")
    return problems


def check_entrypoint(rayjob: dict[str, Any], repo: Path) -> Problems:
    """The entrypoint runs a script under jobs/ with a --config file that exists and validates."""
    script, config = rayjob_entrypoint(rayjob)
    problems = []
    if not script.startswith("jobs/") or not (repo / script).is_file():
        problems.append(f"entrypoint script {script!r} is not a file under jobs/")
    if config is None:
        problems.append("entrypoint has no --config FILE")
    elif not (repo / config).is_file():
        problems.append(f"entrypoint config {config!r} does not exist")
    else:
        try:
            load_config(repo / config)
        except ConfigError as exc:
            problems.append(f"entrypoint config {config!r} does not validate: {exc}")
    if not rayjob["spec"].get("shutdownAfterJobFinishes"):
        problems.append("RayJob does not set shutdownAfterJobFinishes: true")
    return problems


def check_working_dir(rayjob: dict[str, Any], dockerfile_text: str) -> Problems:
    """runtimeEnvYAML's working_dir is the image's WORKDIR (where jobs/ and configs/ are)."""
    runtime_env = yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "") or {}
    workdirs = [arg for word, arg in dockerfile_instructions(dockerfile_text) if word == "WORKDIR"]
    working_dir = runtime_env.get("working_dir")
    if working_dir is not None and working_dir not in workdirs:
        return [f"runtimeEnvYAML working_dir {working_dir!r} is not the image's WORKDIR {workdirs}"]
    return []


def check_head(spec: dict[str, Any]) -> Problems:
    """The head advertises no CPUs: no training or data work is scheduled on it."""
    params = spec["headGroupSpec"].get("rayStartParams") or {}
    if str(params.get("num-cpus")) != "0":
        return [f"head rayStartParams num-cpus is {params.get('num-cpus')!r}, expected '0'"]
    return []


def check_gpu_group(spec: dict[str, Any], cfg: Config) -> Problems:
    """gpu-train: 1 nvidia.com/gpu per pod (requests and limits) and rayStartParams num-gpus '1'."""
    group = group_by_name(spec, GPU_GROUP)
    if group is None:
        return [f"no worker group {GPU_GROUP!r}"]
    if not cfg.scaling.use_gpu:
        return ["configs/cluster.yaml has scaling.use_gpu false"]
    resources = ray_container(group).get("resources") or {}
    problems = []
    for kind in ("requests", "limits"):
        gpus = (resources.get(kind) or {}).get("nvidia.com/gpu")
        if gpus is None or count_quantity(gpus) != 1:
            problems.append(f"{GPU_GROUP} {kind} nvidia.com/gpu is {gpus!r}, expected 1")
    num_gpus = (group.get("rayStartParams") or {}).get("num-gpus")
    if num_gpus is None or count_quantity(num_gpus) != 1:
        problems.append(f"{GPU_GROUP} rayStartParams num-gpus is {num_gpus!r}, expected '1'")
    return problems


def check_worker_cpus(spec: dict[str, Any], group_name: str, needed: float) -> Problems:
    """CPU requests, limits and the advertised CPUs of one pod all cover ``needed``."""
    group = group_by_name(spec, group_name)
    if group is None:
        return [f"no worker group {group_name!r}"]
    resources = ray_container(group).get("resources") or {}
    problems = []
    for kind in ("requests", "limits"):
        cpu = (resources.get(kind) or {}).get("cpu")
        if cpu is None or cpu_quantity(cpu) < needed:
            problems.append(f"{group_name} {kind} cpu is {cpu!r}, needs at least {needed}")
    if logical_cpus(group) < needed:
        problems.append(f"{group_name} advertises {logical_cpus(group)} CPUs, needs at least {needed}")
    return problems


def check_gpu_pods_hold_no_data_actors(spec: dict[str, Any], cfg: Config) -> Problems:
    """A GPU pod advertises exactly cpus_per_worker CPUs: the train worker fills it, Ray Data goes elsewhere."""
    group = group_by_name(spec, GPU_GROUP)
    if group is None:
        return [f"no worker group {GPU_GROUP!r}"]
    if logical_cpus(group) != cfg.scaling.cpus_per_worker:
        return [
            f"{GPU_GROUP} advertises {logical_cpus(group)} CPUs; set rayStartParams num-cpus to "
            f"scaling.cpus_per_worker ({cfg.scaling.cpus_per_worker}) so data actors cannot land there"
        ]
    return []


def check_gpu_replicas(spec: dict[str, Any], cfg: Config) -> Problems:
    """GPU pods scale from 0 (none while no run needs them) up to at least scaling.num_workers."""
    group = group_by_name(spec, GPU_GROUP)
    if group is None:
        return [f"no worker group {GPU_GROUP!r}"]
    problems = []
    if min_replicas(group) != 0:
        problems.append(f"{GPU_GROUP} keeps {min_replicas(group)} GPU pod(s) while idle; minReplicas should be 0")
    if max_replicas(group) < cfg.scaling.num_workers:
        problems.append(f"{GPU_GROUP} maxReplicas {group.get('maxReplicas')} < {cfg.scaling.num_workers}")
    return problems


def check_autoscaling(spec: dict[str, Any]) -> Problems:
    """KubeRay's in-tree autoscaler is on, in version 2: only v2 scales a group up for a pending label selector."""
    problems = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling is not true: groups that start at 0 pods would stay empty")
    if (spec.get("autoscalerOptions") or {}).get("version") != "v2":
        problems.append("autoscalerOptions.version is not v2: label selectors would not drive scale-up")
    return problems


def data_cpus_needed(cfg: Config) -> float:
    return cfg.data.num_actors * cfg.data.cpus_per_actor + DATA_READ_HEADROOM_CPUS


def check_cpu_group(spec: dict[str, Any], cfg: Config) -> Problems:
    """cpu-data scales from 0 to hold data.num_actors x data.cpus_per_actor CPUs (plus the read tasks' slot)."""
    group = group_by_name(spec, CPU_GROUP)
    if group is None:
        return [f"no worker group {CPU_GROUP!r}"]
    problems = check_worker_cpus(spec, CPU_GROUP, cfg.data.cpus_per_actor)
    if min_replicas(group) != 0:
        problems.append(f"{CPU_GROUP} keeps {min_replicas(group)} pod(s) while idle; minReplicas should be 0")
    total = logical_cpus(group) * max_replicas(group)
    if total < data_cpus_needed(cfg):
        problems.append(
            f"{CPU_GROUP} has {total} CPUs, needs {data_cpus_needed(cfg)} "
            f"({cfg.data.num_actors} actors x {cfg.data.cpus_per_actor} CPU + {DATA_READ_HEADROOM_CPUS} for reads)"
        )
    if (ray_container(group).get("resources") or {}).get("limits", {}).get("nvidia.com/gpu"):
        problems.append(f"{CPU_GROUP} requests GPUs")
    return problems


def check_same_groups(cluster_spec: dict[str, Any], job_cluster_spec: dict[str, Any]) -> Problems:
    """The RayJob's inline cluster has the RayCluster's head and worker groups, unchanged."""
    problems = []
    keys = (
        "headGroupSpec",
        "workerGroupSpecs",
        "rayVersion",
        "authOptions",
        "enableInTreeAutoscaling",
        "autoscalerOptions",
        "gcsFaultToleranceOptions",
    )
    for key in keys:
        if cluster_spec.get(key) != job_cluster_spec.get(key):
            problems.append(f"rayjob.yaml rayClusterSpec.{key} differs from raycluster.yaml spec.{key}")
    return problems


def check_token_auth(spec: dict[str, Any]) -> Problems:
    """Token authentication is on (KubeRay authOptions, or RAY_AUTH_MODE=token in every container)."""
    if (spec.get("authOptions") or {}).get("mode") == "token":
        return []
    problems = []
    for container in containers(spec):
        env = {e.get("name"): e for e in container.get("env") or []}
        if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
            problems.append(f"container {container.get('name')!r} runs without token authentication")
    return problems or ([] if containers(spec) else ["no containers"])


def check_container_env(doc: dict[str, Any]) -> Problems:
    """Every container: the versioned image pulled if absent, AWS_* credentials from a Secret, MLFLOW_TRACKING_URI
    and the MLflow user (MLFLOW_TRACKING_USERNAME / _PASSWORD) from a Secret."""
    problems = []
    for container in containers(doc):
        name = container.get("name")
        if container.get("image") != IMAGE:
            problems.append(f"container {name!r} image is {container.get('image')!r}, expected {IMAGE!r}")
        if container.get("imagePullPolicy") != PULL_POLICY:
            problems.append(
                f"container {name!r} imagePullPolicy is {container.get('imagePullPolicy')!r}, expected {PULL_POLICY!r}"
            )
        env = {e.get("name"): e for e in container.get("env") or []}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if var not in env:
                problems.append(f"container {name!r} has no {var}")
        for var in SECRET_ENV_VARS:
            entry = env.get(var)
            if entry is None:
                continue
            if "value" in entry or not (entry.get("valueFrom") or {}).get("secretKeyRef"):
                problems.append(f"container {name!r}: {var} must come from valueFrom.secretKeyRef, not a value")
        if not (env.get("MLFLOW_TRACKING_URI") or {}).get("value"):
            problems.append(f"container {name!r} has no MLFLOW_TRACKING_URI")
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the server's basic auth
            if var not in env:
                problems.append(f"container {name!r} has no {var} (the MLflow server refuses anonymous clients)")
    return problems or ([] if containers(doc) else ["no containers"])


def check_gcs_fault_tolerance(spec: dict[str, Any]) -> Problems:
    """GCS state in an external Redis: its host:port, and its password from a Secret (never a literal)."""
    options = spec.get("gcsFaultToleranceOptions")
    if not options:
        return ["no gcsFaultToleranceOptions: a lost head loses the cluster's state"]
    problems = []
    if not re.fullmatch(r"(rediss?://)?[\w.-]+:\d+", str(options.get("redisAddress", ""))):
        problems.append(f"gcsFaultToleranceOptions.redisAddress {options.get('redisAddress')!r} is not host:port")
    password = options.get("redisPassword") or {}
    if "value" in password or not (password.get("valueFrom") or {}).get("secretKeyRef"):
        problems.append("gcsFaultToleranceOptions.redisPassword must come from valueFrom.secretKeyRef")
    return problems


def _groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    head = spec.get("headGroupSpec") or {}
    return [("head", head)] + [(str(g.get("groupName")), g) for g in spec.get("workerGroupSpecs") or []]


def _volume_at(group: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The pod volume mounted at ``path`` in the Ray container."""
    mount = next((m for m in ray_container(group).get("volumeMounts") or [] if m.get("mountPath") == path), None)
    volumes = group["template"]["spec"].get("volumes") or []
    return next((v for v in volumes if mount and v.get("name") == mount.get("name")), None)


def check_object_store(spec: dict[str, Any]) -> Problems:
    """Every Ray pod: an explicit object store inside its /dev/shm, which is inside its memory; a disk spill volume."""
    problems = []
    for name, group in _groups(spec):
        params = group.get("rayStartParams") or {}
        if not str(params.get("object-store-memory", "")).isdigit():
            problems.append(f"{name}: rayStartParams object-store-memory (bytes) is not set")
            continue
        store = int(params["object-store-memory"])
        shm = (_volume_at(group, "/dev/shm") or {}).get("emptyDir") or {}
        if shm.get("medium") != "Memory" or "sizeLimit" not in shm:
            problems.append(f"{name}: /dev/shm is not a memory-backed emptyDir with a sizeLimit")
        else:
            shm_bytes = memory_quantity(shm["sizeLimit"])
            if store > SHM_SHARE_FOR_OBJECT_STORE * shm_bytes:
                problems.append(f"{name}: object-store-memory {store} does not fit /dev/shm {shm['sizeLimit']}")
            limit = memory_quantity(((ray_container(group).get("resources") or {}).get("limits") or {})["memory"])
            if shm_bytes > MAX_SHM_SHARE_OF_MEMORY * limit:
                problems.append(f"{name}: /dev/shm {shm['sizeLimit']} takes more than half the pod's memory limit")
        spill_dir = params.get("object-spilling-directory")
        spill = _volume_at(group, spill_dir) if spill_dir else None
        if spill is None:
            problems.append(f"{name}: no object-spilling-directory mounted from a pod volume")
        elif "ephemeral" not in spill and (
            (spill.get("emptyDir") or {}).get("medium") == "Memory" or "sizeLimit" not in (spill.get("emptyDir") or {})
        ):
            problems.append(f"{name}: spill volume {spill.get('name')!r} is not a disk emptyDir with a sizeLimit")
    return problems


def check_rayjob_deadline(rayjob: dict[str, Any]) -> Problems:
    """A RayJob that hangs does not hold its GPUs forever."""
    deadline = rayjob["spec"].get("activeDeadlineSeconds")
    if not isinstance(deadline, int) or deadline <= 0:
        return [f"RayJob activeDeadlineSeconds is {deadline!r}, expected a positive number of seconds"]
    return []


def secret_values(node: Any, where: str = "") -> Problems:
    """Mapping keys that name a secret (…secret_access_key, …password, …) holding a literal string."""
    problems = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if SECRET_KEY_PATTERN.search(str(key)) and isinstance(value, str) and value.strip():
                problems.append(f"{path} holds a literal secret")
            else:
                problems.extend(secret_values(value, path))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            problems.extend(secret_values(item, f"{where}[{i}]"))
    return problems


def literal_uri_passwords(text: str) -> Problems:
    """URIs whose user-info holds a literal password (``postgresql://mlflow:hunter2@db/…``), comments included."""
    return [
        f"literal password in the URI {m.group(0)[: m.start(1) - m.start(0)]}***@"
        for m in URI_PASSWORD.finditer(text)
        if not PASSWORD_REFERENCE.fullmatch(m.group(1))
    ]


def secret_env_values(doc: Any) -> Problems:
    """Container variables named like a secret (…PASSWORD, …SECRET…, …TOKEN) that are not taken from a Secret."""
    problems = []
    for container in containers(doc):
        for entry in container.get("env") or []:
            name = str(entry.get("name", ""))
            if SECRET_ENV_NAME.search(name) and not (entry.get("valueFrom") or {}).get("secretKeyRef"):
                problems.append(f"container {container.get('name')!r}: {name} must come from valueFrom.secretKeyRef")
    return problems


def check_no_literal_secrets(text: str, docs: list[Any]) -> Problems:
    """No AWS key material and no password inside a URI in the text (comments included), no literal value under a
    secret-named key, and every secret-named container variable from a Secret."""
    problems = [
        f"literal AWS credential: {m.group(0)[:12]}…" for p in LITERAL_SECRET_PATTERNS for m in p.finditer(text)
    ]
    problems += literal_uri_passwords(text)
    for doc in docs:
        problems.extend(secret_values(doc))
        problems.extend(secret_env_values(doc))
    return problems


def check_aws_schema(launcher: dict[str, Any]) -> Problems:
    """The launcher config validates against Ray's own cluster-config schema (ray/autoscaler/ray-schema.json)."""
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    try:
        jsonschema.validate(launcher, schema)
    except jsonschema.ValidationError as exc:
        return [f"ray-schema.json: {exc.message} at {'/'.join(str(p) for p in exc.absolute_path)}"]
    return []


def check_aws_node_types(launcher: dict[str, Any], cfg: Config) -> Problems:
    """Head type exists and advertises no CPUs; GPU type matches scaling; CPU type holds the data actors."""
    problems = []
    provider = launcher.get("provider") or {}
    if provider.get("type") != "aws" or not provider.get("region"):
        problems.append(f"provider is {provider!r}, expected type aws with a region")
    types = launcher.get("available_node_types") or {}
    head_type = launcher.get("head_node_type")
    if head_type not in types:
        problems.append(f"head_node_type {head_type!r} is not in available_node_types {sorted(types)}")
    elif (types[head_type].get("resources") or {}).get("CPU") != 0:
        problems.append(f"head node type {head_type!r} should advertise CPU: 0")
    gpu = types.get(AWS_GPU_TYPE)
    if gpu is None:
        problems.append(f"no node type {AWS_GPU_TYPE!r}")
    else:
        res = gpu.get("resources") or {}
        if res.get("GPU", 0) < 1:
            problems.append(f"{AWS_GPU_TYPE} resources GPU is {res.get('GPU')!r}, needs >= 1")
        if res.get("CPU") != cfg.scaling.cpus_per_worker:
            problems.append(
                f"{AWS_GPU_TYPE} resources CPU is {res.get('CPU')!r}, expected scaling.cpus_per_worker "
                f"({cfg.scaling.cpus_per_worker}) so data actors cannot land there"
            )
        if int(gpu.get("max_workers", 0)) * int(res.get("GPU", 0)) < cfg.scaling.num_workers:
            problems.append(f"{AWS_GPU_TYPE} max_workers {gpu.get('max_workers')} < {cfg.scaling.num_workers}")
    cpu = types.get(AWS_CPU_TYPE)
    data_nodes = 0
    if cpu is None:
        problems.append(f"no node type {AWS_CPU_TYPE!r}")
    else:
        node_cpus = (cpu.get("resources") or {}).get("CPU", 0)
        total = int(cpu.get("max_workers", 0)) * node_cpus
        if total < data_cpus_needed(cfg):
            problems.append(f"{AWS_CPU_TYPE} provides at most {total} CPUs, needs {data_cpus_needed(cfg)}")
        data_nodes = -(-int(data_cpus_needed(cfg)) // max(int(node_cpus), 1))
    for name in (AWS_CPU_TYPE, AWS_GPU_TYPE):
        if name in types and int(types[name].get("min_workers", 0)) != 0:
            problems.append(
                f"{name} keeps {types[name].get('min_workers')} node(s) while idle; min_workers should be 0"
            )
    if int(launcher.get("max_workers", 0)) < cfg.scaling.num_workers + data_nodes:
        problems.append(
            f"cluster max_workers {launcher.get('max_workers')} < the {cfg.scaling.num_workers} GPU and "
            f"{data_nodes} data nodes one run needs"
        )
    return problems


def check_aws_image(launcher: dict[str, Any]) -> Problems:
    """The nodes run the versioned cmd-ray image, not re-pulled before every start."""
    docker = launcher.get("docker") or {}
    image = str(docker.get("image", ""))
    problems = []
    if image.rsplit("/", 1)[-1] != IMAGE:
        problems.append(f"docker.image is {image!r}, expected <registry>/{IMAGE}")
    if docker.get("pull_before_run") is not False:
        problems.append("docker.pull_before_run should be false for a versioned tag")
    return problems


def _aws_start_option(launcher: dict[str, Any], key: str, flag: str) -> str | None:
    values = option_values([c for c in launcher.get(key) or [] if "ray start" in c], flag)
    return values[0] if values else None


def check_aws_object_store(launcher: dict[str, Any]) -> Problems:
    """Every node: an explicit object store inside its container's /dev/shm, /dev/shm within half the instance's
    memory, and spilling to a host directory mounted into the container."""
    docker = launcher.get("docker") or {}
    types = launcher.get("available_node_types") or {}
    head_type = launcher.get("head_node_type")
    problems = []
    for name, node_type in types.items():
        is_head = name == head_type
        key = "head_start_ray_commands" if is_head else "worker_start_ray_commands"
        own = (node_type.get("docker") or {}).get("head_run_options" if is_head else "worker_run_options")
        options = list(docker.get("run_options") or []) + list(
            own if own is not None else docker.get("head_run_options" if is_head else "worker_run_options") or []
        )
        envs = dict(v.split("=", 1) for v in option_values(options, "--env") if "=" in v)
        store = _aws_start_option(launcher, key, "--object-store-memory") or ""
        store = envs.get(store[1:], store) if store.startswith("$") else store
        shm = option_values(options, "--shm-size")
        if not store.isdigit():
            problems.append(f"{name}: ray start has no --object-store-memory in bytes (got {store!r})")
        elif not shm:
            problems.append(f"{name}: no docker --shm-size for the object store")
        else:
            if int(store) > SHM_SHARE_FOR_OBJECT_STORE * docker_size(shm[-1]):
                problems.append(f"{name}: --object-store-memory {store} does not fit --shm-size {shm[-1]}")
            memory = INSTANCE_MEMORY_GIB.get((node_type.get("node_config") or {}).get("InstanceType"))
            if memory is None or docker_size(shm[-1]) > MAX_SHM_SHARE_OF_MEMORY * memory * 2**30:
                problems.append(f"{name}: --shm-size {shm[-1]} is not within half the instance's memory ({memory} GiB)")
        spill = _aws_start_option(launcher, key, "--object-spilling-directory")
        mounted = [v.split(":")[1] for v in option_values(options, "--volume") + option_values(options, "-v")]
        if spill is None or spill not in mounted:
            problems.append(f"{name}: spill directory {spill!r} is not a host volume mounted into the container")
    return problems


def check_aws_token_auth(launcher: dict[str, Any]) -> Problems:
    """Every ray start runs with RAY_AUTH_MODE=token and every node receives the same token file."""
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in launcher.get(key) or []:
            if "ray start" in command and "RAY_AUTH_MODE=token" not in command:
                problems.append(f"{key}: {command.strip()[:60]!r} starts Ray without RAY_AUTH_MODE=token")
    text = yaml.safe_dump(launcher)
    if "RAY_AUTH_MODE=disabled" in text:
        problems.append("RAY_AUTH_MODE=disabled appears in the launcher config")
    if not any("auth_token" in remote for remote in (launcher.get("file_mounts") or {})):
        problems.append("file_mounts do not copy the auth token to the nodes")
    return problems


# ---------------------------------------------------------------- the MLflow server


def secret_refs(node: Any) -> list[tuple[str, str | None, bool]]:
    """(Secret name, key or None for a whole-Secret volume, optional) of every reference in a manifest."""
    found: list[tuple[str, str | None, bool]] = []
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict):
            found.append((str(ref.get("name")), str(ref.get("key")), bool(ref.get("optional"))))
        volume = node.get("secret")
        if isinstance(volume, dict) and "secretName" in volume:
            found.append((str(volume["secretName"]), None, bool(volume.get("optional"))))
        for value in node.values():
            found.extend(secret_refs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(secret_refs(item))
    return found


def created_secrets(text: str, docs: list[Any]) -> dict[tuple[str | None, str], set[str]]:
    """{(namespace or None, name): keys} of the Secrets a manifest's header creates (``kubectl [-n NS] create secret
    generic NAME --from-literal=KEY=… --from-file=KEY=…``) or that it holds as ``kind: Secret`` objects."""
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if line.lstrip().startswith("#"))
    created: dict[tuple[str | None, str], set[str]] = {}
    for line in re.sub(r"\\\n", " ", comments).splitlines():
        match = re.search(r"kubectl\s+(?:-n\s+(\S+)\s+)?create\s+secret\s+generic\s+([\w.-]+)(.*)", line)
        if match:
            keys = set(re.findall(r"--from-(?:literal|file)=([^=\s]+)=", match.group(3)))
            created.setdefault((match.group(1), match.group(2)), set()).update(keys)
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Secret":
            meta = doc.get("metadata") or {}
            keys = set(doc.get("data") or {}) | set(doc.get("stringData") or {})
            created.setdefault((meta.get("namespace"), str(meta.get("name"))), set()).update(keys)
    return created


def check_secrets_exist(text: str, docs: list[Any]) -> Problems:
    """Every Secret (and key) the manifests reference, unless optional, is created by the header's ``kubectl create
    secret`` commands in the referencing object's namespace (no ``-n`` where the manifest leaves it to you)."""
    created = created_secrets(text, docs)
    problems = []
    for doc in docs:
        namespace = ((doc or {}).get("metadata") or {}).get("namespace")
        for name, key, optional in secret_refs(doc):
            keys = created.get((namespace, name))
            where = f"namespace {namespace}" if namespace else "the manifest's namespace"
            if optional:
                continue
            if keys is None:
                problems.append(f"Secret {name!r} ({where}) is referenced, but the header creates no such Secret")
            elif key is not None and key not in keys:
                problems.append(f"Secret {name!r} is referenced with key {key!r}; the header creates {sorted(keys)}")
    return problems


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e.get("name"): e for e in container.get("env") or []}


def _from_secret(entry: dict[str, Any] | None) -> bool:
    return bool(((entry or {}).get("valueFrom") or {}).get("secretKeyRef"))


def expand_k8s_vars(text: str, env: dict[str, dict[str, Any]]) -> str:
    """``$(VAR)`` references replaced by the container's plain ``value`` variables, as the kubelet expands them;
    variables from Secrets stay ``$(VAR)``."""
    for _ in range(5):  # values may refer to earlier values
        text = K8S_VAR.sub(lambda m: str((env.get(m.group(1)) or {}).get("value", m.group(0))), text)
    return text


def mlflow_server_container(docs: list[Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the Deployment, its container) that runs ``mlflow server``."""
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"].get("containers") or []:
                if (container.get("command") or [])[:2] == ["mlflow", "server"]:
                    return doc, container
    return None


def _selects(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _service_for(docs: list[Any], name: str, namespace: str | None) -> dict[str, Any] | None:
    return next(
        (
            d
            for d in docs
            if isinstance(d, dict)
            and d.get("kind") == "Service"
            and d["metadata"].get("name") == name
            and d["metadata"].get("namespace") == namespace
        ),
        None,
    )


def mlflow_service_hosts(docs: list[Any]) -> list[str]:
    """``host:port`` forms of the Service in front of the MLflow server: ``svc.ns.svc``, its FQDN, ``svc.ns``."""
    found = mlflow_server_container(docs)
    if found is None:
        return []
    deployment = found[0]
    labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
    hosts = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Service" and _selects(doc["spec"].get("selector"), labels):
            name, namespace = doc["metadata"]["name"], doc["metadata"].get("namespace", "default")
            for port in doc["spec"].get("ports") or []:
                for host in (f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}"):
                    hosts.append(f"{host}:{port['port']}")
    return hosts


def check_mlflow_backend(docs: list[Any], container: dict[str, Any]) -> Problems:
    """The backend store is PostgreSQL, its password a ``$(VAR)`` from a Secret and out of the command line; an
    in-cluster database has its Service and a workload with a persistent volume in the manifest."""
    env = _env(container)
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    in_argv = argv_options(argv, "--backend-store-uri")
    uri = in_argv[-1] if in_argv else (env.get("MLFLOW_BACKEND_STORE_URI") or {}).get("value")
    if not uri:
        return ["the MLflow server has no backend store (--backend-store-uri or MLFLOW_BACKEND_STORE_URI)"]
    uri = expand_k8s_vars(str(uri), env)
    parts = re.match(r"(?P<scheme>[\w+]+)://(?:(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@)?(?P<host>[^:/?]+)", uri)
    if parts is None or not (parts["scheme"] == "postgresql" or parts["scheme"].startswith("postgresql+")):
        return [f"the MLflow backend store {uri.split('@')[-1]!r} is not PostgreSQL (postgresql://…)"]
    problems = []
    password = parts["password"]
    if password:
        ref = K8S_VAR.fullmatch(password)
        if ref is None or not _from_secret(env.get(ref.group(1))):
            problems.append("the backend store's password is not a $(VAR) taken from a Secret")
        if in_argv:
            problems.append("the backend store URI with its password is on the command line (`ps` shows it)")
    host = parts["host"]
    if re.search(r"\.svc(\.cluster\.local)?$", host) or "." not in host:
        name, _, rest = host.partition(".")
        namespace = rest.split(".")[0] if rest else None
        service = _service_for(docs, name, namespace)
        if service is None:
            return [*problems, f"the backend store's host {host!r} is no Service in the manifest"]
        workloads = [
            d
            for d in docs
            if isinstance(d, dict)
            and d.get("kind") in ("StatefulSet", "Deployment")
            and _selects(service["spec"].get("selector"), d["spec"]["template"]["metadata"].get("labels") or {})
        ]
        persistent = [
            w
            for w in workloads
            if w["spec"].get("volumeClaimTemplates")
            or any("persistentVolumeClaim" in v for v in w["spec"]["template"]["spec"].get("volumes") or [])
        ]
        if not persistent:
            problems.append(f"no StatefulSet/Deployment with a persistent volume behind the database Service {name!r}")
    return problems


def check_mlflow_server(docs: list[Any], tracking_uris: list[str]) -> Problems:
    """The server as the clusters use it: PostgreSQL backend (:func:`check_mlflow_backend`), artifacts to S3, an
    allow-list that holds the Service names and the Ray pods' tracking URIs (tested with MLflow's own matcher),
    basic auth configured from Secrets, and a readiness probe that goes through the host check and auth."""
    from mlflow.server.security_utils import HEALTH_ENDPOINTS, is_allowed_host_header

    found = mlflow_server_container(docs)
    if found is None:
        return ["no Deployment runs `mlflow server`"]
    deployment, container = found
    env = _env(container)
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    problems = check_mlflow_backend(docs, container)
    destinations = argv_options(argv, "--artifacts-destination") + argv_options(argv, "--default-artifact-root")
    if not any(d.startswith("s3://") for d in destinations):
        problems.append(f"artifacts do not go to S3 (--artifacts-destination {destinations})")
    # Host check: without --allowed-hosts MLflow takes localhost and private IPs only, and refuses service names.
    allowed = [h.strip() for value in argv_options(argv, "--allowed-hosts") for h in value.split(",") if h.strip()]
    if not allowed or "*" in allowed:
        problems.append(f"--allowed-hosts is {allowed or 'unset'}: list the names clients use")
    service_hosts = mlflow_service_hosts(docs)
    ray_hosts = [re.sub(r"^\w+://", "", uri).split("/")[0] for uri in tracking_uris]
    port = (service_hosts[0].rsplit(":", 1)[1]) if service_hosts else "5000"
    for host in dict.fromkeys([*service_hosts, *ray_hosts, f"localhost:{port}", f"127.0.0.1:{port}"]):
        if allowed and not is_allowed_host_header(allowed, host):
            problems.append(f"Host {host!r} is refused by --allowed-hosts {allowed}")
    for host in ray_hosts:
        if host not in service_hosts:
            problems.append(f"the Ray pods' tracking URI names {host!r}, not the MLflow Service {service_hosts}")
    # Basic auth: the admin and the session key from Secrets; the config file written at start by an init container.
    if argv_options(argv, "--app-name") != ["basic-auth"]:
        problems.append("the MLflow server runs without --app-name=basic-auth")
    for var in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        if not _from_secret(env.get(var)):
            problems.append(f"the MLflow server's {var} does not come from a Secret")
    config = str((env.get("MLFLOW_AUTH_CONFIG_PATH") or {}).get("value", ""))
    writers = [
        c
        for c in deployment["spec"]["template"]["spec"].get("initContainers") or []
        if "cmd_ray.mlflow_server" in c.get("command", []) and config in argv_options(c.get("command", []), "--out")
    ]
    if not config or not writers:
        problems.append(f"no init container writes the auth config MLFLOW_AUTH_CONFIG_PATH={config!r}")
    else:
        folder = str(Path(config).parent)
        mounted = [
            {m.get("name") for m in c.get("volumeMounts") or [] if m.get("mountPath") == folder}
            for c in (writers[0], container)
        ]
        if not (mounted[0] & mounted[1]):
            problems.append(f"the auth config's folder {folder} is not one volume in the init container and the server")
    # Readiness: /health is exempt from the host check and from auth; an httpGet probe could only sign in with a
    # literal credential. The probe command signs in from the environment, sending the Ray pods' Host header.
    probe = container.get("readinessProbe") or {}
    if "httpGet" in probe:
        path = probe["httpGet"].get("path")
        why = "exempt from the host check and auth" if path in HEALTH_ENDPOINTS else "cannot sign in"
        problems.append(f"readinessProbe httpGet {path} is {why}: a refused client would find the pod ready")
    command = [str(a) for a in (probe.get("exec") or {}).get("command") or []]
    if "cmd_ray.mlflow_server" not in command or "probe" not in command:
        problems.append("readinessProbe does not run `python -m cmd_ray.mlflow_server probe`")
    else:
        host_header = argv_options(command, "--host-header")
        if not host_header or host_header[-1] not in ray_hosts:
            problems.append(f"readinessProbe's --host-header {host_header} is not the Ray pods' Host {ray_hosts}")
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            if not _from_secret(env.get(var)):
                problems.append(f"the readiness probe's {var} does not come from a Secret")
    return problems


def aws_mlflow_command(launcher: dict[str, Any]) -> str:
    """The head start command that runs ``mlflow server`` ('' if none)."""
    return next((c for c in launcher.get("head_start_ray_commands") or [] if "nohup mlflow server" in c), "")


def check_aws_mlflow(launcher: dict[str, Any], text: str) -> Problems:
    """The head's MLflow server: backend from MLFLOW_BACKEND_STORE_URI of an env file (documented as PostgreSQL),
    artifacts to S3, allowed hosts the head's IP and localhost, basic auth with its config written at start; every
    ``ray start`` exports the MLflow user's credentials; both env files shipped by file_mounts."""
    command = aws_mlflow_command(launcher)
    if not command:
        return ["no head_start_ray_commands entry runs `nohup mlflow server`"]
    problems = []
    server_part = command[command.index("mlflow server") :]
    if option_values([server_part.rstrip(" &)")], "--backend-store-uri"):
        problems.append("mlflow server takes --backend-store-uri on its command line; use MLFLOW_BACKEND_STORE_URI")
    sourced = re.findall(r"\.\s+(~/\S+\.env)", command)
    mounts = launcher.get("file_mounts") or {}
    if not sourced:
        problems.append("the MLflow server's environment file is not sourced before it starts")
    documented = re.search(r"MLFLOW_BACKEND_STORE_URI=(\w[\w+]*)://", text)
    if documented is None or not documented.group(1).startswith("postgresql"):
        problems.append("the header does not document MLFLOW_BACKEND_STORE_URI=postgresql://… for the server")
    argv = [server_part.rstrip(" &)")]
    if not any(d.startswith("s3://") for d in option_values(argv, "--artifacts-destination")):
        problems.append("the head's MLflow artifacts do not go to S3")
    allowed = ",".join(option_values(argv, "--allowed-hosts"))
    if "hostname -I" not in allowed or "localhost:5000" not in allowed or "*" in allowed.split(","):
        problems.append(f"--allowed-hosts {allowed!r} is not the head's private IP and localhost")
    if option_values(argv, "--app-name") != ["basic-auth"]:
        problems.append("the head's MLflow server runs without --app-name basic-auth")
    if "cmd_ray.mlflow_server auth-config" not in command or "MLFLOW_AUTH_CONFIG_PATH=" not in command:
        problems.append("the basic-auth config is not written at start (cmd_ray.mlflow_server auth-config)")
    client_files = set()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for start in [c for c in launcher.get(key) or [] if "ray start" in c]:
            files = re.findall(r"\.\s+(~/\S+\.env)", start)
            if not files:
                problems.append(f"{key}: `ray start` does not export the MLflow user's credentials (an env file)")
            client_files.update(files)
    for path in set(sourced) | client_files:
        if path not in mounts:
            problems.append(f"{path} is sourced but file_mounts do not copy it to the nodes")
    return problems


BASE_IMAGE = re.compile(r"python:(?P<python>\d+\.\d+)\.\d+-slim-(?P<debian>[a-z]+)(@sha256:[0-9a-f]{64})?")


def lock_python(lock_script: str) -> str | None:
    """The Python version the lock files are resolved for (``--python-version`` in cluster/lock.sh)."""
    code = "\n".join(line for line in lock_script.splitlines() if not line.lstrip().startswith("#"))
    match = re.search(r"--python-version[= ]+([\w.]+)", code)
    return match.group(1) if match else None


def check_dockerfile(text: str, lock_script: str) -> Problems:
    """A pinned python slim base of the lock's Python, WORKDIR /app, the dependencies from requirements.lock
    (hashes required), the project itself without dependencies, jobs/ and configs/ copied."""
    instructions = dockerfile_instructions(text)
    problems = []
    froms = [arg for word, arg in instructions if word == "FROM"]
    base = BASE_IMAGE.fullmatch(froms[0]) if froms else None
    if base is None:
        problems.append(f"base image is {froms[:1]}, expected python:X.Y.Z-slim-<debian release>[@sha256:…]")
    elif base["python"] != lock_python(lock_script):
        problems.append(f"base image Python {base['python']} is not the lock's {lock_python(lock_script)}")
    if ("WORKDIR", "/app") not in instructions:
        problems.append("no WORKDIR /app")
    copied = {
        src.rstrip("/")
        for word, arg in instructions
        if word == "COPY"
        for src in [a for a in arg.split() if not a.startswith("--")][:-1]
    }
    for folder in ("jobs", "configs", "cmd_ray", "pyproject.toml", LOCK.name):
        if folder not in copied:
            problems.append(f"{folder} is not copied into the image")
    installs = [arg for word, arg in instructions if word == "RUN" and "pip install" in arg]
    if not any(re.search(r"pip install\b.*\s\.(\s|$)", arg + " ") for arg in installs):
        problems.append("no `pip install .` of the project")
    locked = f"--require-hashes -r {LOCK.name}"
    if not any(locked in arg for arg in installs):
        problems.append(f"the dependencies are not installed with `pip install {locked}`")
    for arg in installs:
        if locked not in arg and "--no-deps" not in arg:
            problems.append(f"`{arg[:60]}` installs packages outside the lock (no --no-deps)")
    return problems


# ---------------------------------------------------------------- lock files


def parse_lock(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``name==version`` pins of a pip requirements file with ``--hash`` lines: {name: (version, hashes)}."""
    joined = re.sub(r"\\\n", " ", text)
    pins = {}
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        name, _, version = requirement.strip().partition("==")
        pins[canonicalize_name(name)] = (version.strip(), frozenset(h.strip() for h in options))
    return pins


def _unpinned(requirements: list[str], pins: dict[str, tuple[str, frozenset[str]]], lock: str) -> Problems:
    problems = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11", "sys_platform": "linux"}):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is not pinned in {lock}")
        elif not req.specifier.contains(pin[0], prereleases=True):
            problems.append(f"{lock} pins {req.name}=={pin[0]}, outside pyproject.toml's {req.specifier}")
    return problems


def check_locks(project: dict[str, Any], runtime_text: str, test_text: str) -> Problems:
    """Every pin has hashes; pyproject.toml's dependencies (and test extras) are pinned within their ranges; the
    test lock pins every runtime package exactly as requirements.lock does."""
    runtime, test = parse_lock(runtime_text), parse_lock(test_text)
    problems = []
    for lock, pins in ((LOCK.name, runtime), (TEST_LOCK.name, test)):
        problems += [f"{lock}: {name} has no version pin" for name, (version, _) in pins.items() if not version]
        problems += [f"{lock}: {name} has no --hash" for name, (_, hashes) in pins.items() if not hashes]
    problems += _unpinned(project["dependencies"], runtime, LOCK.name)
    problems += _unpinned(project["dependencies"] + project["optional-dependencies"]["test"], test, TEST_LOCK.name)
    for name, pin in runtime.items():
        if test.get(name) != pin:
            problems.append(f"{TEST_LOCK.name} does not pin {name} exactly as {LOCK.name} ({pin[0]})")
    return problems


def check_start_head_script(text: str) -> Problems:
    """Local head: `ray start --head`, dashboard on 127.0.0.1, token auth forced on and never disabled."""
    problems = []
    if not re.search(r"\bstart\b.*--head", text):
        problems.append("does not run `ray start --head`")
    if not re.search(r"--dashboard-host[ =]127\.0\.0\.1", text):
        problems.append("dashboard is not bound to 127.0.0.1")
    if not re.search(r"^\s*export RAY_AUTH_MODE=token\s*$", text, re.MULTILINE):
        problems.append("does not export RAY_AUTH_MODE=token")
    if re.search(r"RAY_AUTH_MODE=(disabled|none|off)", text, re.IGNORECASE):
        problems.append("disables token authentication")
    if "RAY_AUTH_MODE=token ray job submit" not in text:
        problems.append("does not print how to submit with RAY_AUTH_MODE=token")
    return problems


def check_kuberay_labels(spec: dict[str, Any], cfg: Config) -> Problems:
    """The data group carries ``data.label_selector``, the train group ``scaling.label_selector``, in the group's
    top-level ``labels`` (KubeRay >= 1.5 passes them to ``ray start --labels``, the pods and the autoscaler); no
    group sets ``rayStartParams.labels``, which KubeRay >= 1.5.0 rejects."""
    problems: Problems = []
    for group_name, wanted in ((CPU_GROUP, cfg.data.label_selector), (GPU_GROUP, cfg.scaling.label_selector)):
        group = group_by_name(spec, group_name) or {}
        labels = group.get("labels") or {}
        if not wanted or labels != wanted:
            problems.append(f"{group_name}: labels {labels} do not match the config's selector {wanted}")
    for group_name, group in _groups(spec):
        if "labels" in (group.get("rayStartParams") or {}):
            problems.append(f"{group_name}: rayStartParams.labels is rejected by KubeRay >= 1.5; use labels")
    return problems


def check_aws_labels(launcher: dict[str, Any], cfg: Config) -> Problems:
    types = launcher["available_node_types"]
    problems: Problems = []
    for node_type, wanted in ((AWS_CPU_TYPE, cfg.data.label_selector), (AWS_GPU_TYPE, cfg.scaling.label_selector)):
        labels = types.get(node_type, {}).get("labels") or {}
        if not wanted or labels != wanted:
            problems.append(f"{node_type}: labels {labels} do not match the config's selector {wanted}")
    return problems


def labels_in_ray_start_params(spec: dict[str, Any]) -> None:
    """The form the manifests had before KubeRay 1.5: ``rayStartParams.labels: "k=v,…"`` and no top-level labels."""
    for _, group in _groups(spec):
        labels = group.pop("labels", {})
        group.setdefault("rayStartParams", {})["labels"] = ",".join(f"{k}={v}" for k, v in labels.items())


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(CLUSTER_CONFIG)


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    return load_one(RAYCLUSTER)


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return load_one(RAYJOB)


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return load_one(AWS_LAUNCHER)


@pytest.fixture(scope="module")
def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def kuberay_specs(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("raycluster.yaml", raycluster["spec"]), ("rayjob.yaml", rayjob["spec"]["rayClusterSpec"])]


# ---------------------------------------------------------------- the real files pass


def test_every_cluster_yaml_parses() -> None:
    paths = sorted(CLUSTER_DIR.rglob("*.yaml")) + sorted(CLUSTER_DIR.rglob("*.yml")) + [CLUSTER_CONFIG]
    assert {RAYCLUSTER, RAYJOB, AWS_LAUNCHER} <= set(paths)
    for path in paths:
        assert load_docs(path), f"{path} is empty"


def test_cluster_config_validates(cfg: Config) -> None:
    assert cfg.scaling.use_gpu and cfg.scaling.num_workers >= 1
    assert cfg.data.uri.startswith("s3://") and cfg.storage.storage_path.startswith("s3://")
    assert cfg.steps_per_epoch() >= 1


def test_kinds(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> None:
    assert check_kind(raycluster, "RayCluster") == []
    assert check_kind(rayjob, "RayJob") == []


def test_rayjob_entrypoint_and_working_dir(rayjob: dict[str, Any], dockerfile_text: str) -> None:
    assert rayjob_entrypoint(rayjob) == ("jobs/distill.py", "configs/cluster.yaml")
    assert check_entrypoint(rayjob, REPO) == []
    assert check_working_dir(rayjob, dockerfile_text) == []


def test_rayjob_has_the_raycluster_groups(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> None:
    assert check_same_groups(raycluster["spec"], rayjob["spec"]["rayClusterSpec"]) == []


@pytest.mark.parametrize("which", [0, 1], ids=["raycluster", "rayjob"])
def test_kuberay_groups_match_config(
    which: int, raycluster: dict[str, Any], rayjob: dict[str, Any], cfg: Config
) -> None:
    name, spec = kuberay_specs(raycluster, rayjob)[which]
    problems = (
        check_head(spec)
        + check_gpu_group(spec, cfg)
        + check_worker_cpus(spec, GPU_GROUP, cfg.scaling.cpus_per_worker)
        + check_gpu_pods_hold_no_data_actors(spec, cfg)
        + check_gpu_replicas(spec, cfg)
        + check_cpu_group(spec, cfg)
        + check_token_auth(spec)
        + check_container_env(spec)
        + check_autoscaling(spec)
        + check_gcs_fault_tolerance(spec)
        + check_object_store(spec)
    )
    assert problems == [], name


def test_the_operator_accepts_the_manifests(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> None:
    """KubeRay's CRD schema (strict, as kubectl applies) and the operator's own rules accept both objects."""
    assert check_crd_schema(raycluster) == []
    assert check_crd_schema(rayjob) == []
    assert check_raycluster(raycluster) == []
    assert check_rayjob(rayjob) == []
    assert check_rayjob_deadline(rayjob) == []


def test_no_literal_secrets_anywhere() -> None:
    paths = [p for p in CLUSTER_DIR.rglob("*") if p.is_file()] + [CLUSTER_CONFIG]
    for path in paths:
        text = path.read_text()
        docs = load_docs(path) if path.suffix in (".yaml", ".yml") else []
        assert check_no_literal_secrets(text, docs) == [], path


def test_aws_launcher(launcher: dict[str, Any], cfg: Config) -> None:
    assert check_aws_schema(launcher) == []
    assert check_aws_node_types(launcher, cfg) == []
    assert check_aws_token_auth(launcher) == []
    assert check_aws_image(launcher) == []
    assert check_aws_object_store(launcher) == []


def test_dockerfile(dockerfile_text: str) -> None:
    assert check_dockerfile(dockerfile_text, LOCK_SCRIPT.read_text()) == []


def test_lock_files() -> None:
    """requirements.lock (the image) and requirements-test.lock (CI) pin pyproject.toml's dependencies alike."""
    assert check_locks(PROJECT, LOCK.read_text(), TEST_LOCK.read_text()) == []
    assert lock_python(LOCK_SCRIPT.read_text()) == "3.11"
    assert LOCK_SCRIPT.stat().st_mode & 0o111, f"{LOCK_SCRIPT} is not executable"
    subprocess.run(["bash", "-n", str(LOCK_SCRIPT)], check=True)
    for lock in (LOCK, TEST_LOCK):
        assert LOCK_SCRIPT.relative_to(REPO).as_posix() in lock.read_text().splitlines()[1], f"{lock} header"


def test_local_scripts() -> None:
    assert check_start_head_script(START_HEAD.read_text()) == []
    assert re.search(r"\bstop\b", STOP.read_text())
    for script in (START_HEAD, STOP):
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)


# ---------------------------------------------------------------- every check can fail


def _group(spec: dict[str, Any], name: str) -> dict[str, Any]:
    group = group_by_name(spec, name)
    assert group is not None
    return group


def _set_gpu_limit(spec: dict[str, Any], value: Any) -> None:
    ray_container(_group(spec, GPU_GROUP))["resources"]["limits"]["nvidia.com/gpu"] = value


Mutation = Callable[[dict[str, Any]], None]

KUBERAY_BREAKS: dict[str, tuple[Mutation, Callable[[dict[str, Any], Config], Problems]]] = {
    "two GPUs per pod": (lambda s: _set_gpu_limit(s, 2), check_gpu_group),
    "no GPU limit": (
        lambda s: ray_container(_group(s, GPU_GROUP))["resources"]["limits"].pop("nvidia.com/gpu"),
        check_gpu_group,
    ),
    "num-gpus disagrees": (lambda s: _group(s, GPU_GROUP)["rayStartParams"].update({"num-gpus": "2"}), check_gpu_group),
    "GPU group renamed": (lambda s: _group(s, GPU_GROUP).update({"groupName": "gpus"}), check_gpu_group),
    "GPU CPU request too small": (
        lambda s: ray_container(_group(s, GPU_GROUP))["resources"]["requests"].update({"cpu": "2"}),
        lambda s, c: check_worker_cpus(s, GPU_GROUP, c.scaling.cpus_per_worker),
    ),
    "GPU CPU limit in millicores too small": (
        lambda s: ray_container(_group(s, GPU_GROUP))["resources"]["limits"].update({"cpu": "3500m"}),
        lambda s, c: check_worker_cpus(s, GPU_GROUP, c.scaling.cpus_per_worker),
    ),
    "GPU pod advertises spare CPUs": (
        lambda s: _group(s, GPU_GROUP)["rayStartParams"].update({"num-cpus": "8"}),
        check_gpu_pods_hold_no_data_actors,
    ),
    "idle GPU pod kept": (lambda s: _group(s, GPU_GROUP).update({"replicas": 1, "minReplicas": 1}), check_gpu_replicas),
    "GPU maxReplicas too small": (lambda s: _group(s, GPU_GROUP).update({"maxReplicas": 1}), check_gpu_replicas),
    "one CPU-data pod at most": (lambda s: _group(s, CPU_GROUP).update({"maxReplicas": 1}), check_cpu_group),
    "idle CPU-data pods kept": (
        lambda s: _group(s, CPU_GROUP).update({"replicas": 2, "minReplicas": 2}),
        check_cpu_group,
    ),
    "autoscaling off": (lambda s: s.update({"enableInTreeAutoscaling": False}), lambda s, c: check_autoscaling(s)),
    "autoscaler v1": (lambda s: s["autoscalerOptions"].update({"version": "v1"}), lambda s, c: check_autoscaling(s)),
    "no GCS fault tolerance": (
        lambda s: s.pop("gcsFaultToleranceOptions"),
        lambda s, c: check_gcs_fault_tolerance(s),
    ),
    "literal Redis password": (
        lambda s: s["gcsFaultToleranceOptions"].update({"redisPassword": {"value": "hunter2"}}),
        lambda s, c: check_gcs_fault_tolerance(s),
    ),
    "Redis address without port": (
        lambda s: s["gcsFaultToleranceOptions"].update({"redisAddress": "redis.redis.svc"}),
        lambda s, c: check_gcs_fault_tolerance(s),
    ),
    "object store size left to Ray": (
        lambda s: _group(s, CPU_GROUP)["rayStartParams"].pop("object-store-memory"),
        lambda s, c: check_object_store(s),
    ),
    "object store larger than /dev/shm": (
        lambda s: _group(s, GPU_GROUP)["rayStartParams"].update({"object-store-memory": str(9 * 2**30)}),
        lambda s, c: check_object_store(s),
    ),
    "/dev/shm half the pod's memory or more": (
        lambda s: ray_container(s["headGroupSpec"])["resources"]["limits"].update({"memory": "4Gi"}),
        lambda s, c: check_object_store(s),
    ),
    "/dev/shm on disk": (
        lambda s: _volume_at(_group(s, CPU_GROUP), "/dev/shm")["emptyDir"].pop("medium"),
        lambda s, c: check_object_store(s),
    ),
    "no spill directory": (
        lambda s: s["headGroupSpec"]["rayStartParams"].pop("object-spilling-directory"),
        lambda s, c: check_object_store(s),
    ),
    "spill directory not mounted": (
        lambda s: _group(s, GPU_GROUP)["rayStartParams"].update({"object-spilling-directory": "/tmp/spill"}),
        lambda s, c: check_object_store(s),
    ),
    "spill volume in memory": (
        lambda s: _volume_at(_group(s, GPU_GROUP), "/ray-spill")["emptyDir"].update({"medium": "Memory"}),
        lambda s, c: check_object_store(s),
    ),
    "spill volume unbounded": (
        lambda s: _volume_at(_group(s, CPU_GROUP), "/ray-spill")["emptyDir"].pop("sizeLimit"),
        lambda s, c: check_object_store(s),
    ),
    "image re-pulled each start": (
        lambda s: ray_container(_group(s, GPU_GROUP)).update({"imagePullPolicy": "Always"}),
        lambda s, c: check_container_env(s),
    ),
    "latest tag": (
        lambda s: ray_container(s["headGroupSpec"]).update({"image": "cmd-ray:latest"}),
        lambda s, c: check_container_env(s),
    ),
    "labels back in rayStartParams": (labels_in_ray_start_params, check_kuberay_labels),
    "CPU-data advertises 4 CPUs": (
        lambda s: _group(s, CPU_GROUP)["rayStartParams"].update({"num-cpus": "4"}),
        check_cpu_group,
    ),
    "head schedules work": (
        lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": "4"}),
        lambda s, c: check_head(s),
    ),
    "token auth off": (lambda s: s.pop("authOptions"), lambda s, c: check_token_auth(s)),
    "literal AWS secret in env": (
        lambda s: ray_container(_group(s, GPU_GROUP))["env"].__setitem__(
            1, {"name": "AWS_SECRET_ACCESS_KEY", "value": "x" * 40}
        ),
        lambda s, c: check_container_env(s),
    ),
    "no MLflow URI": (
        lambda s: ray_container(s["headGroupSpec"]).update(
            {"env": [e for e in ray_container(s["headGroupSpec"])["env"] if e["name"] != "MLFLOW_TRACKING_URI"]}
        ),
        lambda s, c: check_container_env(s),
    ),
    "other image": (
        lambda s: ray_container(_group(s, CPU_GROUP)).update({"image": "rayproject/ray:2.60.0"}),
        lambda s, c: check_container_env(s),
    ),
}


@pytest.mark.parametrize("breakage", sorted(KUBERAY_BREAKS))
def test_kuberay_checks_reject_a_broken_copy(breakage: str, raycluster: dict[str, Any], cfg: Config) -> None:
    mutate, check = KUBERAY_BREAKS[breakage]
    spec = copy.deepcopy(raycluster["spec"])
    assert check(spec, cfg) == [], "the check must pass on the real manifest first"
    mutate(spec)
    assert check(spec, cfg), f"check did not notice: {breakage}"


def _head_env(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return ray_container(doc["spec"]["headGroupSpec"])["env"]


def _annotate(doc: dict[str, Any], key: str, value: str) -> None:
    doc["metadata"].setdefault("annotations", {})[key] = value


# The operator's semantic rules (tests/kuberay_rules.py): each breakage of a RayCluster, and a fragment of the
# problem the rule reports. Rules marked 1.6 are those KubeRay >= 1.6.0 added.
OPERATOR_BREAKS: dict[str, tuple[Mutation, str]] = {
    "labels in the head's rayStartParams": (
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"labels": "cmd-ray.role=head"}),
        "rayStartParams['labels'] is not supported",
    ),
    "labels in a worker's rayStartParams": (
        lambda d: _group(d["spec"], CPU_GROUP)["rayStartParams"].update({"labels": "cmd-ray.role=data"}),
        "rayStartParams['labels'] is not supported",
    ),
    "label key not a qualified name": (
        lambda d: _group(d["spec"], CPU_GROUP).update({"labels": {"cmd-ray/role/data": "yes"}}),
        "invalid label key",
    ),
    "label value with a space": (
        lambda d: _group(d["spec"], GPU_GROUP).update({"labels": {"cmd-ray.role": "train nodes"}}),
        "invalid label value",
    ),
    "label value too long": (
        lambda d: _group(d["spec"], GPU_GROUP).update({"labels": {"cmd-ray.role": "t" * 64}}),
        "invalid label value",
    ),
    "resources in rayStartParams and the group": (
        lambda d: _group(d["spec"], GPU_GROUP).update({"resources": {"GPU": "1"}}),
        "resources set in both",
    ),
    "head without containers": (
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"].update({"containers": []}),
        "at least one container",
    ),
    "worker without containers": (
        lambda d: _group(d["spec"], CPU_GROUP)["template"]["spec"].update({"containers": []}),
        "at least one container",
    ),
    "ft-enabled annotation beside gcsFaultToleranceOptions": (
        lambda d: _annotate(d, "ray.io/ft-enabled", "true"),
        "are both set",
    ),
    "external-storage-namespace annotation": (
        lambda d: _annotate(d, "ray.io/external-storage-namespace", "cmd-ray"),
        "external-storage-namespace",
    ),
    "redis-password in rayStartParams": (
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"redis-password": "x"}),
        "redis-password",
    ),
    "REDIS_PASSWORD env": (
        lambda d: _head_env(d).append({"name": "REDIS_PASSWORD", "value": "x"}),
        "REDIS_PASSWORD",
    ),
    "RAY_REDIS_ADDRESS env beside gcsFaultToleranceOptions": (
        lambda d: _head_env(d).append({"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}),
        "RAY_REDIS_ADDRESS",
    ),
    "RAY_REDIS_ADDRESS env instead of gcsFaultToleranceOptions": (
        lambda d: (
            d["spec"].pop("gcsFaultToleranceOptions"),
            _head_env(d).append({"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}),
        ),
        "without gcsFaultToleranceOptions",
    ),
    "redis username in rayStartParams": (
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"redis-username": "ray"}),
        "redis username",
    ),
    "autoscaler v2 env while autoscaling is off": (
        lambda d: (
            d["spec"].update({"enableInTreeAutoscaling": False}),
            _head_env(d).append({"name": "RAY_enable_autoscaler_v2", "value": "1"}),
        ),
        "while enableInTreeAutoscaling is off",
    ),
    "autoscaler version and env both set": (
        lambda d: _head_env(d).append({"name": "RAY_enable_autoscaler_v2", "value": "1"}),
        "both autoscalerOptions.version",
    ),
    "restartPolicy Always under autoscaler v2": (
        lambda d: _group(d["spec"], GPU_GROUP)["template"]["spec"].update({"restartPolicy": "Always"}),
        "autoscaler v2 needs Never",
    ),
    "suspended worker group under autoscaling": (
        lambda d: _group(d["spec"], CPU_GROUP).update({"suspend": True}),
        "cannot be suspended",
    ),
    "token auth on a Ray older than 2.52": (lambda d: d["spec"].update({"rayVersion": "2.51.1"}), "older than 2.52"),
    "token auth without rayVersion": (lambda d: d["spec"].pop("rayVersion"), "rayVersion is not set"),
    "minReplicas above maxReplicas (1.6)": (
        lambda d: _group(d["spec"], GPU_GROUP).update({"minReplicas": 3}),
        "greater than maxReplicas",
    ),
    "negative maxReplicas (1.6)": (lambda d: _group(d["spec"], GPU_GROUP).update({"maxReplicas": -1}), "negative"),
    "no maxReplicas without autoscaling (1.6)": (
        lambda d: (
            d["spec"].update({"enableInTreeAutoscaling": False}),
            _group(d["spec"], CPU_GROUP).pop("maxReplicas"),
        ),
        "must set both minReplicas and maxReplicas",
    ),
    "idleTimeoutSeconds under autoscaler v1 (1.6)": (
        lambda d: (
            d["spec"]["autoscalerOptions"].update({"version": "v1"}),
            _group(d["spec"], CPU_GROUP).update({"idleTimeoutSeconds": 60}),
        ),
        "autoscaler v2 is not enabled",
    ),
    "name not a DNS-1035 label": (lambda d: d["metadata"].update({"name": "cmd_ray"}), "DNS-1035"),
    "name too long": (lambda d: d["metadata"].update({"name": "c" * 54}), "longer than 53"),
}


@pytest.mark.parametrize("breakage", sorted(OPERATOR_BREAKS))
def test_operator_rules_reject_a_broken_copy(breakage: str, raycluster: dict[str, Any]) -> None:
    mutate, fragment = OPERATOR_BREAKS[breakage]
    broken = copy.deepcopy(raycluster)
    assert check_raycluster(broken) == [], "the rules must pass on the real manifest first"
    mutate(broken)
    problems = check_raycluster(broken)
    assert any(fragment in p for p in problems), (breakage, problems)


RAYJOB_BREAKS: dict[str, tuple[Mutation, str]] = {
    "no activeDeadlineSeconds": (lambda j: j["spec"].pop("activeDeadlineSeconds"), "activeDeadlineSeconds"),
    "activeDeadlineSeconds 0": (lambda j: j["spec"].update({"activeDeadlineSeconds": 0}), "positive"),
    "negative backoffLimit": (lambda j: j["spec"].update({"backoffLimit": -1}), "backoffLimit"),
    "negative ttlSecondsAfterFinished": (lambda j: j["spec"].update({"ttlSecondsAfterFinished": -1}), "non-negative"),
    "ttl without shutdown": (
        lambda j: j["spec"].update({"shutdownAfterJobFinishes": False}),
        "ttlSecondsAfterFinished",
    ),
    "suspended without shutdown": (
        lambda j: j["spec"].update({"suspend": True, "shutdownAfterJobFinishes": False, "ttlSecondsAfterFinished": 0}),
        "cannot be suspended",
    ),
    "neither rayClusterSpec nor clusterSelector": (lambda j: j["spec"].pop("rayClusterSpec"), "must be set"),
    "runtimeEnvYAML not YAML": (lambda j: j["spec"].update({"runtimeEnvYAML": "working_dir: [/app"}), "not YAML"),
    "backoffLimit in InteractiveMode": (
        lambda j: j["spec"].update({"submissionMode": "InteractiveMode", "backoffLimit": 1}),
        "InteractiveMode",
    ),
    "inline cluster with labels in rayStartParams": (
        lambda j: _group(j["spec"]["rayClusterSpec"], GPU_GROUP)["rayStartParams"].update({"labels": "a=b"}),
        "rayClusterSpec: worker group 'gpu-train': rayStartParams['labels']",
    ),
    "name too long": (lambda j: j["metadata"].update({"name": "d" * 48}), "longer than 47"),
}


@pytest.mark.parametrize("breakage", sorted(RAYJOB_BREAKS))
def test_rayjob_rules_reject_a_broken_copy(breakage: str, rayjob: dict[str, Any]) -> None:
    mutate, fragment = RAYJOB_BREAKS[breakage]
    broken = copy.deepcopy(rayjob)
    assert check_rayjob(broken) + check_rayjob_deadline(broken) == []
    mutate(broken)
    problems = check_rayjob(broken) + check_rayjob_deadline(broken)
    assert any(fragment in p for p in problems), (breakage, problems)


# The CRD schema (strict): each breakage of a RayCluster (or, where named, the RayJob) and the path it names.
SCHEMA_BREAKS: dict[str, tuple[str, Mutation, str]] = {
    "rayStartParams value not a string": (
        "raycluster",
        lambda d: _group(d["spec"], GPU_GROUP)["rayStartParams"].update({"num-gpus": 1}),
        "rayStartParams/num-gpus",
    ),
    "label value not a string": (
        "raycluster",
        lambda d: _group(d["spec"], CPU_GROUP).update({"labels": {"cmd-ray.role": 1}}),
        "labels/cmd-ray.role",
    ),
    "misspelt field (pruned without strict validation)": (
        "raycluster",
        lambda d: _group(d["spec"], CPU_GROUP).update({"minReplica": 0}),
        "workerGroupSpecs/0",
    ),
    "labels under the pod spec": (
        "raycluster",
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"].update({"labels": {"cmd-ray.role": "head"}}),
        "headGroupSpec/template/spec",
    ),
    "unknown autoscaler version": (
        "raycluster",
        lambda d: d["spec"]["autoscalerOptions"].update({"version": "v3"}),
        "autoscalerOptions/version",
    ),
    "GCS FT without redisAddress": (
        "raycluster",
        lambda d: d["spec"]["gcsFaultToleranceOptions"].pop("redisAddress"),
        "gcsFaultToleranceOptions",
    ),
    "unknown auth mode": ("raycluster", lambda d: d["spec"]["authOptions"].update({"mode": "basic"}), "authOptions"),
    "worker group without groupName": (
        "raycluster",
        lambda d: _group(d["spec"], GPU_GROUP).pop("groupName"),
        "workerGroupSpecs/1",
    ),
    "GPU quantity not a quantity": (
        "raycluster",
        lambda d: _set_gpu_limit(d["spec"], "one"),
        "nvidia.com/gpu",
    ),
    "activeDeadlineSeconds as text": (
        "rayjob",
        lambda j: j["spec"].update({"activeDeadlineSeconds": "4d"}),
        "activeDeadlineSeconds",
    ),
}


@pytest.mark.parametrize("breakage", sorted(SCHEMA_BREAKS))
def test_crd_schema_rejects_a_broken_copy(breakage: str, raycluster: dict[str, Any], rayjob: dict[str, Any]) -> None:
    which, mutate, path = SCHEMA_BREAKS[breakage]
    broken = copy.deepcopy(raycluster if which == "raycluster" else rayjob)
    assert check_crd_schema(broken) == []
    mutate(broken)
    problems = check_crd_schema(broken)
    assert any(path in p for p in problems), (breakage, problems)


def test_same_groups_check_rejects_drift(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> None:
    job_spec = copy.deepcopy(rayjob["spec"]["rayClusterSpec"])
    _group(job_spec, GPU_GROUP)["replicas"] = 3
    assert check_same_groups(raycluster["spec"], job_spec)


def test_kind_check_rejects_wrong_api(raycluster: dict[str, Any]) -> None:
    broken = copy.deepcopy(raycluster)
    broken["apiVersion"] = "ray.io/v1alpha1"
    assert check_kind(broken, "RayCluster")
    assert check_kind(raycluster, "RayJob")


@pytest.mark.parametrize(
    ("entrypoint", "why"),
    [
        ("python jobs/no_such_job.py --config configs/cluster.yaml", "missing script"),
        ("python cmd_ray/cli.py --config configs/cluster.yaml", "script outside jobs/"),
        ("python jobs/distill.py", "no --config"),
        ("python jobs/distill.py --config configs/no_such.yaml", "missing config"),
    ],
)
def test_entrypoint_check_rejects(entrypoint: str, why: str, rayjob: dict[str, Any]) -> None:
    broken = copy.deepcopy(rayjob)
    broken["spec"]["entrypoint"] = entrypoint
    assert check_entrypoint(broken, REPO), why


def test_entrypoint_check_rejects_an_invalid_config(rayjob: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "distill.py").write_text("")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cluster.yaml").write_text("scaling:\n  num_gpus: 2\n")  # unknown key
    assert any("does not validate" in p for p in check_entrypoint(rayjob, tmp_path))
    broken = copy.deepcopy(rayjob)
    broken["spec"]["shutdownAfterJobFinishes"] = False
    assert any("shutdownAfterJobFinishes" in p for p in check_entrypoint(broken, REPO))


def test_working_dir_check_rejects_a_mismatch(rayjob: dict[str, Any], dockerfile_text: str) -> None:
    broken = copy.deepcopy(rayjob)
    broken["spec"]["runtimeEnvYAML"] = "working_dir: /srv/code\n"
    assert check_working_dir(broken, dockerfile_text)


@pytest.mark.parametrize(
    ("text", "doc"),
    [
        ("env:\n  - {name: AWS_ACCESS_KEY_ID, value: AKIAABCDEFGHIJKLMNOP}\n", None),
        ("# aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n", None),
        ("", {"credentials": {"aws_secret_access_key": "not-in-a-secret"}}),
        ("", {"auth": {"password": "hunter2"}}),
        ("", {"env": {"RAY_AUTH_TOKEN": "x", "auth_token": "0123abcd"}}),
        ("- --backend-store-uri=postgresql://mlflow:hunter2@db:5432/mlflow\n", None),
        ("# export MLFLOW_TRACKING_URI=https://alice:s3cret@mlflow.example.com\n", None),
        ("", {"containers": [{"name": "db", "env": [{"name": "POSTGRES_PASSWORD", "value": "hunter2"}]}]}),
        ("", {"containers": [{"name": "m", "env": [{"name": "MLFLOW_FLASK_SERVER_SECRET_KEY", "value": "k"}]}]}),
    ],
)
def test_secret_check_rejects_literal_credentials(text: str, doc: Any) -> None:
    assert check_no_literal_secrets(text, [doc] if doc else [])


def test_secret_check_accepts_references() -> None:
    text = RAYCLUSTER.read_text()
    assert check_no_literal_secrets(text, load_docs(RAYCLUSTER)) == []
    assert check_no_literal_secrets("", [{"aws_secret_access_key": {"secretKeyRef": {"name": "s", "key": "k"}}}]) == []
    assert check_no_literal_secrets("", [{"file_mounts": {"~/.ray/auth_token": "~/.ray/auth_token"}}]) == []
    for reference in ("$(MLFLOW_DB_PASSWORD)", "$DB_PASSWORD", "${DB_PASSWORD}", "<db password>"):
        assert check_no_literal_secrets(f"postgresql://mlflow:{reference}@db:5432/mlflow", []) == [], reference
    config = [{"containers": [{"name": "m", "env": [{"name": "MLFLOW_AUTH_CONFIG_PATH", "value": "/a/b.ini"}]}]}]
    assert check_no_literal_secrets("", config) == []


AWS_BREAKS: dict[str, tuple[Mutation, Callable[[dict[str, Any], Config], Problems]]] = {
    "head type missing": (lambda c: c.update({"head_node_type": "ray.head.default"}), check_aws_node_types),
    "head does work": (
        lambda c: c["available_node_types"]["head"].update({"resources": {"CPU": 4}}),
        check_aws_node_types,
    ),
    "GPU type has no GPU": (
        lambda c: c["available_node_types"][AWS_GPU_TYPE]["resources"].pop("GPU"),
        check_aws_node_types,
    ),
    "GPU type spare CPUs": (
        lambda c: c["available_node_types"][AWS_GPU_TYPE]["resources"].update({"CPU": 8}),
        check_aws_node_types,
    ),
    "too few GPU nodes": (
        lambda c: c["available_node_types"][AWS_GPU_TYPE].update({"max_workers": 1}),
        check_aws_node_types,
    ),
    "too few data CPUs": (
        lambda c: c["available_node_types"][AWS_CPU_TYPE].update({"max_workers": 1}),
        check_aws_node_types,
    ),
    "not AWS": (lambda c: c["provider"].update({"type": "gcp"}), check_aws_node_types),
    "cluster max_workers": (lambda c: c.update({"max_workers": 1}), check_aws_node_types),
    "schema: unknown key": (lambda c: c.update({"worker_nodes": {}}), lambda c, _: check_aws_schema(c)),
    "schema: fractional resource": (
        lambda c: c["available_node_types"][AWS_GPU_TYPE]["resources"].update({"CPU": 0.5}),
        lambda c, _: check_aws_schema(c),
    ),
    "worker without token": (
        lambda c: c.update({"worker_start_ray_commands": ["ray start --address=$RAY_HEAD_IP:6379"]}),
        lambda c, _: check_aws_token_auth(c),
    ),
    "token not shipped": (
        lambda c: c.update({"file_mounts": {"~/cmd-ray": "."}}),
        lambda c, _: check_aws_token_auth(c),
    ),
    "idle GPU nodes kept": (
        lambda c: c["available_node_types"][AWS_GPU_TYPE].update({"min_workers": 2}),
        check_aws_node_types,
    ),
    "idle data nodes kept": (
        lambda c: c["available_node_types"][AWS_CPU_TYPE].update({"min_workers": 1}),
        check_aws_node_types,
    ),
    "schema: label value not a string": (
        lambda c: c["available_node_types"][AWS_CPU_TYPE].update({"labels": {"cmd-ray.role": 1}}),
        lambda c, _: check_aws_schema(c),
    ),
    "latest image": (
        lambda c: c["docker"].update({"image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/cmd-ray:latest"}),
        lambda c, _: check_aws_image(c),
    ),
    "pull before every run": (lambda c: c["docker"].update({"pull_before_run": True}), lambda c, _: check_aws_image(c)),
    "head object store left to Ray": (
        lambda c: c.update(
            {
                "head_start_ray_commands": [
                    x.replace("--object-store-memory=", "--x=") for x in c["head_start_ray_commands"]
                ]
            }
        ),
        lambda c, _: check_aws_object_store(c),
    ),
    "no --shm-size on the head": (
        lambda c: c["docker"].pop("head_run_options"),
        lambda c, _: check_aws_object_store(c),
    ),
    "GPU object store larger than its /dev/shm": (
        lambda c: c["available_node_types"][AWS_GPU_TYPE]["docker"]["worker_run_options"].__setitem__(
            1, f"--env CMD_RAY_OBJECT_STORE_MEMORY={5 * 2**30}"
        ),
        lambda c, _: check_aws_object_store(c),
    ),
    "GPU /dev/shm more than half of g5.xlarge": (
        lambda c: c["available_node_types"][AWS_GPU_TYPE]["docker"]["worker_run_options"].__setitem__(
            0, "--shm-size=9g"
        ),
        lambda c, _: check_aws_object_store(c),
    ),
    "spill directory not mounted": (
        lambda c: c["docker"].update({"run_options": [o for o in c["docker"]["run_options"] if "ray-spill" not in o]}),
        lambda c, _: check_aws_object_store(c),
    ),
}


@pytest.mark.parametrize("breakage", sorted(AWS_BREAKS))
def test_aws_checks_reject_a_broken_copy(breakage: str, launcher: dict[str, Any], cfg: Config) -> None:
    mutate, check = AWS_BREAKS[breakage]
    broken = copy.deepcopy(launcher)
    assert check(broken, cfg) == [], "the check must pass on the real config first"
    mutate(broken)
    assert check(broken, cfg), f"check did not notice: {breakage}"


def test_aws_checks_follow_the_config(launcher: dict[str, Any], cfg: Config) -> None:
    bigger = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"num_workers": 4})})
    assert any(AWS_GPU_TYPE in p for p in check_aws_node_types(launcher, bigger))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("COPY --chown=ray:ray jobs/ ./jobs/", "# jobs not copied"),
        ("COPY --chown=ray:ray configs/ ./configs/", "# configs not copied"),
        ("FROM python:3.11.7-slim-bookworm", "FROM ubuntu:24.04"),
        ("FROM python:3.11.7-slim-bookworm", "FROM python:3.11-slim"),  # a moving tag
        ("FROM python:3.11.7-slim-bookworm", "FROM python:3.12.8-slim-bookworm"),  # not the lock's Python
        ("FROM python:3.11.7-slim-bookworm", "FROM python:3.11.7-slim-bookworm@sha256:1234"),  # a digest cut short
        ("WORKDIR /app", "WORKDIR /srv"),
        ("RUN pip install --no-deps . &&", "RUN true &&"),
        ("RUN pip install --require-hashes -r requirements.lock", "RUN pip install ."),  # unlocked dependencies
        ("COPY --chown=ray:ray requirements.lock ./", "# lock not copied"),
    ],
)
def test_dockerfile_check_rejects(old: str, new: str, dockerfile_text: str) -> None:
    lock_script = LOCK_SCRIPT.read_text()
    assert old in dockerfile_text
    assert check_dockerfile(dockerfile_text, lock_script) == []
    assert check_dockerfile(dockerfile_text.replace(old, new, 1), lock_script)


def test_dockerfile_check_accepts_a_digest(dockerfile_text: str) -> None:
    pinned = dockerfile_text.replace("-slim-bookworm\n", "-slim-bookworm@sha256:" + "0" * 64 + "\n", 1)
    assert "@sha256:" in pinned
    assert check_dockerfile(pinned, LOCK_SCRIPT.read_text()) == []


def _drop_pin(text: str, name: str) -> str:
    """The lock without the entry of ``name`` (its ``name==…`` line and the ``--hash`` lines under it)."""
    return re.sub(rf"(?m)^{re.escape(name)}==.*(?:\n[ #].*)*\n", "", text)


@pytest.mark.parametrize(
    "breakage",
    [
        "torch not pinned",
        "torch outside pyproject's range",
        "a pin without hashes",
        "test lock drifts from the runtime lock",
        "a test tool not pinned",
    ],
)
def test_lock_check_rejects(breakage: str) -> None:
    runtime, test = LOCK.read_text(), TEST_LOCK.read_text()
    assert check_locks(PROJECT, runtime, test) == []
    if breakage == "torch not pinned":
        runtime = _drop_pin(runtime, "torch")
    elif breakage == "torch outside pyproject's range":
        runtime = re.sub(r"(?m)^torch==[^ ]+", "torch==2.99.0", runtime)
    elif breakage == "a pin without hashes":
        runtime = re.sub(r"(?m)^(pyyaml==[^ ]+) \\\n(\s+--hash=\S+( \\)?\n)+", r"\1\n", runtime)
    elif breakage == "test lock drifts from the runtime lock":
        test = re.sub(r"(?m)^numpy==[^ ]+", "numpy==1.26.4", test)
    else:
        test = _drop_pin(test, "pytest")
    assert check_locks(PROJECT, runtime, test), breakage


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("export RAY_AUTH_MODE=token", "export RAY_AUTH_MODE=disabled"),
        ("--dashboard-host 127.0.0.1", "--dashboard-host 0.0.0.0"),
        ("start --head", "start"),
        ("RAY_AUTH_MODE=token ray job submit", "ray job submit"),
    ],
)
def test_start_head_check_rejects(old: str, new: str) -> None:
    text = START_HEAD.read_text()
    assert old in text
    assert check_start_head_script(text.replace(old, new))


# ---------------------------------------------------------------- placement labels


def test_nodes_carry_the_labels_the_config_selects(
    raycluster: dict[str, Any], rayjob: dict[str, Any], launcher: dict[str, Any], cfg: Config
) -> None:
    for name, spec in kuberay_specs(raycluster, rayjob):
        assert check_kuberay_labels(spec, cfg) == [], name
    assert check_aws_labels(launcher, cfg) == []


def test_label_checks_reject_a_swapped_role(raycluster: dict[str, Any], launcher: dict[str, Any], cfg: Config) -> None:
    broken = copy.deepcopy(raycluster)
    group_by_name(broken["spec"], GPU_GROUP)["labels"] = {"cmd-ray.role": "data"}
    assert check_kuberay_labels(broken["spec"], cfg)
    broken_launcher = copy.deepcopy(launcher)
    broken_launcher["available_node_types"][AWS_CPU_TYPE]["labels"] = {"cmd-ray.role": "train"}
    assert check_aws_labels(broken_launcher, cfg)


def test_labels_in_ray_start_params_are_rejected(
    raycluster: dict[str, Any], rayjob: dict[str, Any], cfg: Config
) -> None:
    """The pre-1.5 form fails the label check and the operator's own rule, in both manifests."""
    for doc, check in ((raycluster, check_raycluster), (rayjob, check_rayjob)):
        old_form = copy.deepcopy(doc)
        spec = old_form["spec"] if doc is raycluster else old_form["spec"]["rayClusterSpec"]
        labels_in_ray_start_params(spec)
        assert any("rayStartParams.labels" in p for p in check_kuberay_labels(spec, cfg))
        rejected = [p for p in check(old_form) if "rayStartParams['labels'] is not supported" in p]
        assert len(rejected) == 3, rejected  # the head and both worker groups


# ---------------------------------------------------------------- the MLflow server


@pytest.fixture
def mlflow_docs() -> list[Any]:
    return load_docs(MLFLOW_MANIFEST)


def tracking_uris(raycluster: dict[str, Any], rayjob: dict[str, Any]) -> list[str]:
    """The MLFLOW_TRACKING_URI values of every Ray container of both manifests."""
    uris = {
        str(_env(container)["MLFLOW_TRACKING_URI"].get("value"))
        for _, spec in kuberay_specs(raycluster, rayjob)
        for container in containers(spec)
        if "MLFLOW_TRACKING_URI" in _env(container)
    }
    return sorted(uris)


def test_mlflow_server_manifest_is_what_the_clusters_point_at(
    raycluster: dict[str, Any], rayjob: dict[str, Any], mlflow_docs: list[Any]
) -> None:
    uris = tracking_uris(raycluster, rayjob)
    assert uris == ["http://mlflow.mlflow.svc:5000"]
    assert check_mlflow_server(mlflow_docs, uris) == []
    found = mlflow_server_container(mlflow_docs)
    assert found is not None
    for container in containers(found[0]):  # the server and the init container that writes its auth config
        assert (container["image"], container["imagePullPolicy"]) == (IMAGE, PULL_POLICY), container["name"]


def test_every_secret_a_manifest_references_is_created_in_its_header() -> None:
    for path in (RAYCLUSTER, RAYJOB, MLFLOW_MANIFEST):
        assert check_secrets_exist(path.read_text(), load_docs(path)) == [], path


def test_aws_head_runs_mlflow_as_the_kuberay_server(launcher: dict[str, Any]) -> None:
    assert check_aws_mlflow(launcher, AWS_LAUNCHER.read_text()) == []


def _server(docs: list[Any]) -> dict[str, Any]:
    found = mlflow_server_container(docs)
    assert found is not None
    return found[1]


def _set_env(docs: list[Any], name: str, entry: dict[str, Any]) -> None:
    env = _server(docs)["env"]
    env[[e["name"] for e in env].index(name)] = {"name": name, **entry}


def _replace_option(docs: list[Any], flag: str, *new: str) -> None:
    command = _server(docs)["command"]
    command[:] = [a for a in command if not a.startswith(flag + "=")] + list(new)


def _drop_doc(docs: list[Any], kind: str, name: str) -> None:
    docs[:] = [d for d in docs if (d["kind"], d["metadata"]["name"]) != (kind, name)]


def _doc(docs: list[Any], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if (d["kind"], d["metadata"]["name"]) == (kind, name))


MLFLOW_BREAKS: dict[str, Callable[[list[Any]], None]] = {
    "sqlite backend store": lambda d: _set_env(d, "MLFLOW_BACKEND_STORE_URI", {"value": "sqlite:////mlflow/mlflow.db"}),
    "backend URI on the command line": lambda d: _server(d)["command"].append(
        "--backend-store-uri=postgresql://mlflow:$(MLFLOW_DB_PASSWORD)@mlflow-postgres.mlflow.svc:5432/mlflow"
    ),
    "database password not from a Secret": lambda d: _set_env(d, "MLFLOW_DB_PASSWORD", {"value": "hunter2"}),
    "no Service for the database": lambda d: _drop_doc(d, "Service", "mlflow-postgres"),
    "database on no volume": lambda d: _doc(d, "StatefulSet", "mlflow-postgres")["spec"].pop("volumeClaimTemplates"),
    "artifacts on the pod's disk": lambda d: _replace_option(
        d, "--artifacts-destination", "--artifacts-destination=/a"
    ),
    "allowed hosts without the Service": lambda d: _replace_option(
        d, "--allowed-hosts", "--allowed-hosts=localhost:5000,127.0.0.1:5000"
    ),
    "allowed hosts without the port": lambda d: _replace_option(
        d, "--allowed-hosts", "--allowed-hosts=mlflow.mlflow.svc,mlflow.mlflow.svc.cluster.local,localhost,127.0.0.1"
    ),
    "any host allowed": lambda d: _replace_option(d, "--allowed-hosts", "--allowed-hosts=*"),
    "MLflow's default hosts": lambda d: _replace_option(d, "--allowed-hosts"),
    "no basic auth": lambda d: _replace_option(d, "--app-name"),
    "admin password in the manifest": lambda d: _set_env(d, "MLFLOW_AUTH_ADMIN_PASSWORD", {"value": "x" * 16}),
    "auth config never written": lambda d: _doc(d, "Deployment", "mlflow")["spec"]["template"]["spec"].pop(
        "initContainers"
    ),
    "readiness on /health": lambda d: _server(d).update(
        {"readinessProbe": {"httpGet": {"path": "/health", "port": 5000}}}
    ),
    "probe with a Host the Ray pods do not send": lambda d: _server(d)["readinessProbe"]["exec"]["command"].__setitem__(
        -1, "--host-header=127.0.0.1:5000"
    ),
}


@pytest.mark.parametrize("breakage", sorted(MLFLOW_BREAKS))
def test_mlflow_server_check_rejects_a_broken_copy(
    breakage: str, mlflow_docs: list[Any], raycluster: dict[str, Any], rayjob: dict[str, Any]
) -> None:
    uris = tracking_uris(raycluster, rayjob)
    assert check_mlflow_server(mlflow_docs, uris) == []
    MLFLOW_BREAKS[breakage](mlflow_docs)
    assert check_mlflow_server(mlflow_docs, uris), breakage


def test_mlflow_server_check_rejects_ray_pods_pointing_elsewhere(mlflow_docs: list[Any]) -> None:
    problems = check_mlflow_server(mlflow_docs, ["http://mlflow.default.svc:5000"])
    assert any("refused by --allowed-hosts" in p for p in problems), problems
    assert any("not the MLflow Service" in p for p in problems), problems


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        (MLFLOW_MANIFEST, "create secret generic mlflow-auth", "create secret generic mlflow-admin"),
        (MLFLOW_MANIFEST, "--from-literal=flask-secret-key=", "--from-literal=flask-key="),
        (
            MLFLOW_MANIFEST,
            "kubectl -n mlflow create secret generic mlflow-postgres",
            "kubectl create secret generic mlflow-postgres",
        ),
        (RAYCLUSTER, "create secret generic cmd-ray-mlflow", "create secret generic cmd-ray-mlfow"),
        (RAYJOB, '--from-literal=password="$CMD_RAY_MLFLOW_PASSWORD"', '--from-literal=pw="$CMD_RAY_MLFLOW_PASSWORD"'),
    ],
)
def test_secret_existence_check_rejects(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    assert check_secrets_exist(text, load_docs(path)) == []
    assert check_secrets_exist(text.replace(old, new, 1), load_docs(path)), (path.name, new)


def _aws_mlflow_replace(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(launcher: dict[str, Any]) -> None:
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            launcher[key] = [c.replace(old, new) for c in launcher[key]]

    return mutate


AWS_MLFLOW_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "sqlite on the head": _aws_mlflow_replace(
        "--port 5000", "--port 5000 --backend-store-uri sqlite:///$HOME/mlflow/mlflow.db"
    ),
    "no basic auth": _aws_mlflow_replace("--app-name basic-auth", ""),
    "auth config not written": _aws_mlflow_replace("python -m cmd_ray.mlflow_server auth-config", "true"),
    "any host": _aws_mlflow_replace('--allowed-hosts "', '--allowed-hosts "*,'),
    "artifacts on the head's disk": _aws_mlflow_replace("s3://my-bucket/mlartifacts", "$HOME/mlartifacts"),
    "workers without the MLflow user": lambda c: c.update(
        {
            "worker_start_ray_commands": [
                x.replace(". ~/.cmd-ray/mlflow-client.env", "true") for x in c["worker_start_ray_commands"]
            ]
        }
    ),
    "client env file not shipped": lambda c: c["file_mounts"].pop("~/.cmd-ray/mlflow-client.env"),
}


@pytest.mark.parametrize("breakage", sorted(AWS_MLFLOW_BREAKS))
def test_aws_mlflow_check_rejects_a_broken_copy(breakage: str, launcher: dict[str, Any]) -> None:
    text = AWS_LAUNCHER.read_text()
    broken = copy.deepcopy(launcher)
    assert check_aws_mlflow(broken, text) == []
    AWS_MLFLOW_BREAKS[breakage](broken)
    assert check_aws_mlflow(broken, text), breakage


def test_aws_mlflow_check_wants_postgresql_documented(launcher: dict[str, Any]) -> None:
    text = AWS_LAUNCHER.read_text()
    assert "MLFLOW_BACKEND_STORE_URI=postgresql://" in text
    sqlite = text.replace("MLFLOW_BACKEND_STORE_URI=postgresql://", "MLFLOW_BACKEND_STORE_URI=sqlite://")
    assert check_aws_mlflow(launcher, sqlite)
