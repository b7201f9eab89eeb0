"""The cluster manifests agree with configs/cluster.yaml (fast: no Kubernetes, no Ray cluster, no cloud).

Each rule is a small ``check_*`` helper that returns a list of problems (empty = fine). The real files must
pass every helper, and every helper is also run on a deliberately broken copy to show that it can fail.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml

from cmd_ray.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO / "cluster"
CLUSTER_CONFIG = REPO / "configs" / "cluster.yaml"
RAYCLUSTER = CLUSTER_DIR / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER_DIR / "kuberay" / "rayjob.yaml"
AWS_LAUNCHER = CLUSTER_DIR / "aws" / "cluster.yaml"
DOCKERFILE = CLUSTER_DIR / "Dockerfile"
START_HEAD = CLUSTER_DIR / "local" / "start-head.sh"
STOP = CLUSTER_DIR / "local" / "stop.sh"

IMAGE = "cmd-ray:latest"
GPU_GROUP = "gpu-train"
CPU_GROUP = "cpu-data"
AWS_GPU_TYPE = "gpu_train"
AWS_CPU_TYPE = "cpu_data"
# Ray Data's read tasks (ray.data.range) need a CPU slot beside the fixed pool of SampleMaker actors.
DATA_READ_HEADROOM_CPUS = 1.0
SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
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
    """At least scaling.num_workers GPU pods exist from the start and may exist at most."""
    group = group_by_name(spec, GPU_GROUP)
    if group is None:
        return [f"no worker group {GPU_GROUP!r}"]
    problems = []
    if min_replicas(group) < cfg.scaling.num_workers:
        problems.append(
            f"{GPU_GROUP} starts {min_replicas(group)} replica(s), scaling.num_workers is {cfg.scaling.num_workers}"
        )
    if int(group.get("maxReplicas", min_replicas(group))) < cfg.scaling.num_workers:
        problems.append(f"{GPU_GROUP} maxReplicas {group.get('maxReplicas')} < {cfg.scaling.num_workers}")
    return problems


def data_cpus_needed(cfg: Config) -> float:
    return cfg.data.num_actors * cfg.data.cpus_per_actor + DATA_READ_HEADROOM_CPUS


def check_cpu_group(spec: dict[str, Any], cfg: Config) -> Problems:
    """cpu-data holds data.num_actors x data.cpus_per_actor CPUs (plus the read tasks' slot)."""
    group = group_by_name(spec, CPU_GROUP)
    if group is None:
        return [f"no worker group {CPU_GROUP!r}"]
    problems = check_worker_cpus(spec, CPU_GROUP, cfg.data.cpus_per_actor)
    total = logical_cpus(group) * min_replicas(group)
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
    for key in ("headGroupSpec", "workerGroupSpecs", "rayVersion", "authOptions"):
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
    """Every container: the image, AWS_* credentials from a Secret, MLFLOW_TRACKING_URI set."""
    problems = []
    for container in containers(doc):
        name = container.get("name")
        if container.get("image") != IMAGE:
            problems.append(f"container {name!r} image is {container.get('image')!r}, expected {IMAGE!r}")
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
    return problems or ([] if containers(doc) else ["no containers"])


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


def check_no_literal_secrets(text: str, docs: list[Any]) -> Problems:
    """No AWS key material in the text (comments included) and no literal value under a secret-named key."""
    problems = [
        f"literal AWS credential: {m.group(0)[:12]}…" for p in LITERAL_SECRET_PATTERNS for m in p.finditer(text)
    ]
    for doc in docs:
        problems.extend(secret_values(doc))
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
    if cpu is None:
        problems.append(f"no node type {AWS_CPU_TYPE!r}")
    else:
        total = int(cpu.get("max_workers", 0)) * (cpu.get("resources") or {}).get("CPU", 0)
        if total < data_cpus_needed(cfg):
            problems.append(f"{AWS_CPU_TYPE} provides at most {total} CPUs, needs {data_cpus_needed(cfg)}")
    wanted = sum(int(t.get("min_workers", 0)) for name, t in types.items() if name != head_type)
    if int(launcher.get("max_workers", 0)) < max(wanted, cfg.scaling.num_workers):
        problems.append(f"cluster max_workers {launcher.get('max_workers')} < the workers the node types start")
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


def check_dockerfile(text: str) -> Problems:
    """python:3.11-slim base, WORKDIR /app, the project pip-installed, jobs/ and configs/ copied."""
    instructions = dockerfile_instructions(text)
    problems = []
    froms = [arg for word, arg in instructions if word == "FROM"]
    if not froms or not froms[0].startswith("python:3.11-slim"):
        problems.append(f"base image is {froms[:1]}, expected python:3.11-slim")
    if ("WORKDIR", "/app") not in instructions:
        problems.append("no WORKDIR /app")
    copied = {
        src.rstrip("/")
        for word, arg in instructions
        if word == "COPY"
        for src in [a for a in arg.split() if not a.startswith("--")][:-1]
    }
    for folder in ("jobs", "configs", "cmd_ray", "pyproject.toml"):
        if folder not in copied:
            problems.append(f"{folder} is not copied into the image")
    if not any(word == "RUN" and re.search(r"pip install\b.*\s\.(\s|$)", arg + " ") for word, arg in instructions):
        problems.append("no `pip install .` of the project")
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
    )
    assert problems == [], name


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


def test_dockerfile(dockerfile_text: str) -> None:
    assert check_dockerfile(dockerfile_text) == []


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
    "one GPU replica": (lambda s: _group(s, GPU_GROUP).update({"replicas": 1, "minReplicas": 1}), check_gpu_replicas),
    "GPU maxReplicas too small": (lambda s: _group(s, GPU_GROUP).update({"maxReplicas": 1}), check_gpu_replicas),
    "one CPU-data pod": (lambda s: _group(s, CPU_GROUP).update({"replicas": 1, "minReplicas": 1}), check_cpu_group),
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
    ],
)
def test_secret_check_rejects_literal_credentials(text: str, doc: Any) -> None:
    assert check_no_literal_secrets(text, [doc] if doc else [])


def test_secret_check_accepts_references() -> None:
    text = RAYCLUSTER.read_text()
    assert check_no_literal_secrets(text, load_docs(RAYCLUSTER)) == []
    assert check_no_literal_secrets("", [{"aws_secret_access_key": {"secretKeyRef": {"name": "s", "key": "k"}}}]) == []
    assert check_no_literal_secrets("", [{"file_mounts": {"~/.ray/auth_token": "~/.ray/auth_token"}}]) == []


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
        ("FROM python:3.11-slim", "FROM ubuntu:24.04"),
        ("WORKDIR /app", "WORKDIR /srv"),
        ("RUN pip install --no-deps . &&", "RUN true &&"),
    ],
)
def test_dockerfile_check_rejects(old: str, new: str, dockerfile_text: str) -> None:
    assert old in dockerfile_text
    assert check_dockerfile(dockerfile_text.replace(old, new))


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


def parse_labels(text: str) -> dict[str, str]:
    """``ray start --labels`` syntax: ``k1=v1,k2=v2``."""
    return dict(item.split("=", 1) for item in text.split(",") if item)


def check_kuberay_labels(spec: dict[str, Any], cfg: Config) -> Problems:
    """The data group carries ``data.label_selector``, the train group ``scaling.label_selector``."""
    problems: Problems = []
    for group_name, wanted in ((CPU_GROUP, cfg.data.label_selector), (GPU_GROUP, cfg.scaling.label_selector)):
        group = group_by_name(spec, group_name) or {}
        labels = parse_labels(str((group.get("rayStartParams") or {}).get("labels", "")))
        if not wanted or labels != wanted:
            problems.append(f"{group_name}: labels {labels} do not match the config's selector {wanted}")
    return problems


def check_aws_labels(launcher: dict[str, Any], cfg: Config) -> Problems:
    types = launcher["available_node_types"]
    problems: Problems = []
    for node_type, wanted in ((AWS_CPU_TYPE, cfg.data.label_selector), (AWS_GPU_TYPE, cfg.scaling.label_selector)):
        labels = types.get(node_type, {}).get("labels") or {}
        if not wanted or labels != wanted:
            problems.append(f"{node_type}: labels {labels} do not match the config's selector {wanted}")
    return problems


def test_nodes_carry_the_labels_the_config_selects(
    raycluster: dict[str, Any], rayjob: dict[str, Any], launcher: dict[str, Any], cfg: Config
) -> None:
    for name, spec in kuberay_specs(raycluster, rayjob):
        assert check_kuberay_labels(spec, cfg) == [], name
    assert check_aws_labels(launcher, cfg) == []


def test_label_checks_reject_a_swapped_role(raycluster: dict[str, Any], launcher: dict[str, Any], cfg: Config) -> None:
    broken = copy.deepcopy(raycluster)
    group_by_name(broken["spec"], GPU_GROUP)["rayStartParams"]["labels"] = "cmd-ray.role=data"
    assert check_kuberay_labels(broken["spec"], cfg)
    broken_launcher = copy.deepcopy(launcher)
    broken_launcher["available_node_types"][AWS_CPU_TYPE]["labels"] = {"cmd-ray.role": "train"}
    assert check_aws_labels(broken_launcher, cfg)


def test_mlflow_server_manifest_is_what_the_clusters_point_at(raycluster: dict[str, Any]) -> None:
    docs = load_docs(CLUSTER_DIR / "kuberay" / "mlflow.yaml")
    service = next(d for d in docs if d["kind"] == "Service")
    uri = {e["name"]: e.get("value") for e in ray_container(raycluster["spec"]["headGroupSpec"])["env"]}
    assert uri["MLFLOW_TRACKING_URI"] == (
        f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
    )
    server = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert any(arg.startswith("--artifacts-destination=s3://") for arg in server["command"])
