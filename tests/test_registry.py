"""MLflow runs and the model registry on a real sqlite backend store (no Ray needed)."""

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import Config, SynthConfig, load_config
from cmd_ray.mlflow_runs import store_client
from cmd_ray.models import standalone
from cmd_ray.models.dimpnet import build_model, network_spec


@pytest.fixture
def cfg(tmp_path):
    return load_config(
        None,
        [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "mlflow.registered_model_name=unit-tracker"],
    )


def test_register_then_pull_returns_the_same_weights_and_config(cfg, tmp_path):
    torch.manual_seed(3)
    model = build_model(cfg)
    run_id = mlflow_runs.start_run(cfg, "unit")
    registered = registry.log_and_register(cfg, run_id, model)
    mlflow_runs.end_run(cfg, run_id)

    assert registered.uri == "models:/unit-tracker@candidate"
    pulled, pulled_cfg = registry.pull(registered.uri, tmp_path / "out", tracking_uri=cfg.mlflow.tracking_uri)
    assert pulled_cfg == cfg
    assert not pulled.training
    expected = model.state_dict()
    assert set(pulled.state_dict()) == set(expected)
    for name, tensor in pulled.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml", "state_dict.pt"]


def test_pull_rejects_what_is_not_a_registered_model_uri(cfg):
    with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
        registry.pull("runs:/abc/model", tracking_uri=cfg.mlflow.tracking_uri)


def test_params_never_hold_the_secret_key(cfg, monkeypatch):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    leaky = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"run_name": f"run-{secret}"})})
    run_id = mlflow_runs.start_run(leaky, "leaky", tags={"note": f"key={secret}"})
    run = store_client(cfg.mlflow.tracking_uri).get_run(run_id)
    assert run.data.params["storage.run_name"] == "run-***"
    assert all(secret not in str(value) for value in [*run.data.params.values(), *run.data.tags.values()])


def test_relative_sqlite_store_is_pinned_to_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pinned = mlflow_runs.pin_tracking_uri(load_config(None))
    assert pinned.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_load_model_reads_every_source_the_same_way(cfg, tmp_path):
    """Registry URI, checkpoint folder, its training_state.pt and a plain state dict give the same network."""
    from cmd_ray.models.training_state import save_training_state

    torch.manual_seed(4)
    model = build_model(cfg)
    run_id = mlflow_runs.start_run(cfg, "unit")
    registered = registry.log_and_register(cfg, run_id, model)
    mlflow_runs.end_run(cfg, run_id)
    save_training_state(tmp_path, {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 1})
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    sources = [registered.uri, str(tmp_path), str(tmp_path / "training_state.pt"), str(tmp_path / "weights.pt")]
    for source in sources:
        net, net_cfg = registry.load_model(source, cfg)
        assert net_cfg == cfg and not net.training, source
        assert all(torch.equal(t, model.state_dict()[k]) for k, t in net.state_dict().items()), source
    with pytest.raises(registry.ModelLoadError, match="cannot pull models:/unit-tracker@nobody"):
        registry.load_model("models:/unit-tracker@nobody", cfg)


# ------------------------------------------------------------------------------------- a registry entry that travels

REPO = Path(__file__).resolve().parents[1]
STUDENT, TEACHER = "cmd-ray-demo-tracker", "cmd-ray-demo-teacher"


@dataclass(frozen=True)
class Registered:
    """A teacher (pretrain job) and a student distilled from it, registered in a sqlite store under ``root``."""

    root: Path
    uri: str
    cfg: Config
    teacher: registry.RegisteredModel
    student: registry.RegisteredModel


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    """The two models a demo run registers, logged as the jobs log them (run tags, pair/sequence counts)."""
    from cmd_ray.train.teacher import resolve_teacher

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    common = [f"mlflow.tracking_uri={uri}", "tracker.preset=tiny", "data.uri=s3://pairs/demo"]
    teacher_cfg = load_config(None, [*common, f"mlflow.registered_model_name={TEACHER}"])
    run_id = mlflow_runs.start_run(
        teacher_cfg, "pretrain", tags={"cmd_ray.job": "pretrain", "cmd_ray.data_uri": "data/demo/rgb_sequences"}
    )
    mlflow_runs.log_metrics(teacher_cfg, run_id, {"train_sequences": 3, "val_sequences": 1}, step=0)
    torch.manual_seed(0)
    teacher = registry.log_and_register(teacher_cfg, run_id, build_model(teacher_cfg), TEACHER)
    mlflow_runs.end_run(teacher_cfg, run_id)

    cfg = load_config(
        None,
        [*common, f"mlflow.registered_model_name={STUDENT}", f"model.init_checkpoint=models:/{TEACHER}@candidate"],
    )
    lineage = resolve_teacher(cfg)  # what the distill job reads and tags its run with
    run_id = mlflow_runs.start_run(
        cfg, "distill", tags={"cmd_ray.job": "distill", "cmd_ray.data_uri": cfg.data.uri, **lineage.tags()}
    )
    mlflow_runs.log_metrics(cfg, run_id, {"train_pairs": 90, "val_pairs": 10}, step=0)
    student = registry.log_and_register(cfg, run_id, build_model(cfg))
    mlflow_runs.end_run(cfg, run_id)
    return Registered(root, uri, cfg, teacher, student)


def _download(reg: Registered, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(reg.student.uri, dst_path=str(dst), tracking_uri=reg.uri))


def test_logged_model_pins_installed_packages_ships_its_code_and_has_a_signature(registered, tmp_path):
    local = _download(registered, tmp_path / "model")
    lines = [line.strip() for line in (local / "requirements.txt").read_text().splitlines() if line.strip()]
    requirements = [Requirement(line) for line in lines]
    names = {canonicalize_name(r.name) for r in requirements}
    assert "cmd-ray" not in names and not any("cmd" in line for line in lines), lines
    assert {canonicalize_name(n) for n in registry.MODEL_REQUIREMENTS} | {"mlflow"} == names
    for req in requirements:  # pinned exactly, at the version installed here (PEP 440: 2.14.1 matches 2.14.1+cu130)
        assert str(req.specifier).startswith("=="), req
        installed = importlib.metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req} but {installed} is installed"

    # The network code travels as cmd_ray_net: cmd-ray's own modules, renamed, and nothing else
    shipped = local / registry.CODE_DIR / standalone.STANDALONE_PACKAGE
    copied = [m for m in standalone.module_closure() if m != "cmd_ray"]
    assert {"cmd_ray.models.dimpnet", "cmd_ray.models.prroi", "cmd_ray.vocabulary"} <= set(copied)
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()) == sorted(
        [Path("__init__.py"), *(standalone.module_file(m).relative_to(REPO / "cmd_ray") for m in copied)]
    )
    for module in copied:
        source = standalone.module_file(module)
        text = (shipped / source.relative_to(REPO / "cmd_ray")).read_text()
        assert text == standalone.renamed_source(source.read_text()), module
        assert "cmd_ray" not in standalone.imported_packages(text), module
    assert "\nfrom cmd_ray_net.models.backbone import ResNetBackbone" in (shipped / "models/dimpnet.py").read_text()

    # No pickled Python object: a models-from-code python_model, the weights as a plain tensors file
    flavors = yaml.safe_load((local / "MLmodel").read_text())["flavors"]
    assert set(flavors) == {"python_function"}
    pyfunc = flavors["python_function"]
    assert "python_model" not in pyfunc and Path(pyfunc["model_code_path"]).name == "pyfunc_model.py"
    assert (local / "pyfunc_model.py").read_bytes() == registry.PYFUNC_MODEL_FILE.read_bytes()
    assert "cmd_ray" not in standalone.imported_packages(registry.PYFUNC_MODEL_FILE.read_text())
    assert {key: Path(a["path"]).name for key, a in pyfunc["artifacts"].items()} == registry.ARTIFACTS
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".pth", ".cloudpickle")]
    state = torch.load(local / "artifacts" / registry.WEIGHTS_FILE, weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert json.loads((local / "artifacts" / registry.NETWORK_FILE).read_text()) == {
        **network_spec(registered.cfg),
        "image_size": registered.cfg.data.sampling.output_sz,
    }

    signature = mlflow.models.get_model_info(registered.student.uri).signature
    assert signature is not None
    inputs = {spec.name: spec.shape for spec in signature.inputs.inputs}
    assert inputs == {
        "train_imgs": (-1, -1, 3, -1, -1),
        "test_imgs": (-1, 3, -1, -1),
        "train_bb": (-1, -1, 4),
        "test_proposals": (-1, -1, 4),
    }
    assert {spec.name: spec.shape for spec in signature.outputs.inputs} == {
        "scores": (-1, -1, -1),
        "iou_pred": (-1, -1),
    }


def test_version_description_names_variant_teacher_and_data(registered):
    client = store_client(registered.uri)
    student = client.get_model_version(STUDENT, registered.student.version)
    teacher_run = registered.teacher.run_id
    # the student trained D3's loss from the teacher, not from merge(B3, C1): it is not called the paper's D3
    facts = (
        "variant: D3 loss from the teacher (distill.variant=D3, started from the teacher, not from merge(B3,C1)",
        f"teacher: models:/{TEACHER}@candidate (version 1)",
        teacher_run,
        "s3://pairs/demo",
    )
    for fact in facts:
        assert fact in student.description, (fact, student.description)
    assert "variant: D3 (" not in student.description
    assert (
        "90 train / 10 val pairs" in student.description
        and "26000 samples per epoch x 50 epochs" in student.description
    )
    assert student.tags["cmd_ray.variant"] == "D3 loss from the teacher"
    assert student.tags["cmd_ray.start"] == "teacher"
    assert student.tags["cmd_ray.teacher_run_id"] == teacher_run
    assert student.tags["cmd_ray.teacher_model_version"] == registered.teacher.version
    assert student.tags["cmd_ray.data_uri"] == "s3://pairs/demo"
    assert student.tags["cmd_ray.train_pairs"] == "90"

    teacher = client.get_model_version(TEACHER, registered.teacher.version)
    assert "variant: none (supervised" in teacher.description
    assert "teacher: random-init" in teacher.description
    assert "data: data/demo/rgb_sequences (3 train / 1 val sequences)" in teacher.description


FRESH_PROCESS = """
import importlib.util, json, sys

site_packages, tracking_uri, arrays_path = sys.argv[1:4]
model_uris = sys.argv[4:]

# Any unpickling fails, and is recorded: the C and the Python pickle modules, before anything else is imported.
import pickle, _pickle
unpickled = []
def refuse(*args, **kwargs):
    unpickled.append(repr(args)[:200])
    raise RuntimeError("unpickling is not allowed here")
class RefusingUnpickler(_pickle.Unpickler):  # subclasses, so code that subclasses them still imports
    def __init__(self, *args, **kwargs):
        refuse(*args)
class RefusingPyUnpickler(pickle._Unpickler):
    def __init__(self, *args, **kwargs):
        refuse(*args)
for module in (pickle, _pickle):
    module.load = module.loads = refuse
    module.Unpickler = RefusingUnpickler
pickle._load = pickle._loads = refuse
pickle._Unpickler = RefusingPyUnpickler

sys.path.append(site_packages)  # added by hand, so its .pth files (the editable cmd-ray install) never run
assert importlib.util.find_spec("cmd_ray") is None, "cmd_ray is importable: the check would prove nothing"
import mlflow
import numpy as np

mlflow.set_tracking_uri(tracking_uri)
report = {"models": {}}
arrays = {}
for i, uri in enumerate(model_uris):
    model = mlflow.pyfunc.load_model(uri)
    example = model.input_example
    out = model.predict(example)
    arrays |= {f"{i}/in/{k}": v for k, v in example.items()} | {f"{i}/out/{k}": v for k, v in out.items()}
    errors = {}
    bad = {
        "float64": {**example, "test_imgs": example["test_imgs"].astype(np.float64)},
        "no_proposals": {k: v for k, v in example.items() if k != "test_proposals"},
        "two_sequences": {**example, "test_imgs": np.concatenate([example["test_imgs"]] * 2)},
    }
    for what, data in bad.items():
        try:
            model.predict(data)
            errors[what] = None
        except Exception as exc:
            errors[what] = f"{type(exc).__name__}: {exc}"
    report["models"][uri] = {
        "input_types": {k: [str(v.dtype), list(v.shape)] for k, v in example.items()},
        "output_types": {k: [str(v.dtype), list(v.shape)] for k, v in out.items()},
        "errors": errors,
    }
np.savez(arrays_path, **arrays)
report["cmd_ray_importable"] = importlib.util.find_spec("cmd_ray") is not None
report["unpickled"] = unpickled
report["modules"] = sorted(
    m.__file__ for name, m in list(sys.modules.items()) if name.partition(".")[0] in ("cmd_ray", "cmd_ray_net")
)
report["model_modules"] = sorted(
    m.__file__ for name, m in list(sys.modules.items()) if name.startswith("code_model_") and m.__file__
)
print(json.dumps(report))
"""


def _with_dependencies(names: set[str]) -> set[str]:
    """``names`` and everything they require, transitively (installed distributions, markers evaluated here)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            required = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in required:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_plain_mlflow_loads_and_predicts_without_cmd_ray_and_without_unpickling(registered, tmp_path):
    """``mlflow.pyfunc.load_model(uri).predict(input_example)`` in a process where cmd_ray cannot be imported and
    every unpickler raises gives what cmd-ray's own network gives on the same arrays, for DiMP and for ATOM."""
    atom_cfg = load_config(
        None,
        [f"mlflow.tracking_uri={registered.uri}", "model.architecture=atom", "distill.variant=B1"],
    )
    torch.manual_seed(5)
    run_id = mlflow_runs.start_run(atom_cfg, "atom")
    path = list(sys.path)
    atom = registry.log_and_register(atom_cfg, run_id, build_model(atom_cfg), "unit-atom")
    mlflow_runs.end_run(atom_cfg, run_id)
    # MLflow ran the example through the model here while logging; its code folder and modules are gone again
    assert sys.path == path and not [m for m in sys.modules if m.startswith(standalone.STANDALONE_PACKAGE)]

    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    # -I: no PYTHONPATH, no user site, no script or working folder on sys.path; -S: no site-packages .pth files
    cmd = [sys.executable, "-I", "-S", str(script), sysconfig.get_paths()["purelib"], registered.uri]
    uris = [registered.student.uri, atom.uri]
    arrays_file = tmp_path / "arrays.npz"
    proc = subprocess.run(
        [*cmd, str(arrays_file), *uris], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["unpickled"] == [] and not report["cmd_ray_importable"]
    assert report["modules"] and all("/code/cmd_ray_net/" in f for f in report["modules"]), report["modules"]
    assert [Path(f).name for f in report["model_modules"]] == ["pyfunc_model.py"] * 2

    arrays = np.load(arrays_file, allow_pickle=False)
    size = registered.cfg.data.sampling.output_sz
    for i, (uri, arch) in enumerate(zip(uris, ("dimp", "atom"), strict=True)):
        got = report["models"][uri]
        assert got["input_types"] == {
            "train_imgs": ["float32", [1, 1, 3, size, size]],
            "train_bb": ["float32", [1, 1, 4]],
            "test_imgs": ["float32", [1, 3, size, size]],
            "test_proposals": ["float32", [1, 4, 4]],
        }
        expected_out = {"iou_pred": ["float32", [1, 4]]}
        if arch == "dimp":  # L = 128/16 + (4 + 1) % 2 = 9
            expected_out = {"scores": ["float32", [1, 9, 9]], **expected_out}
        assert got["output_types"] == expected_out
        errors = got["errors"]
        assert "float64" in errors["float64"] and "test_imgs" in errors["float64"], errors
        assert "test_proposals" in errors["no_proposals"], errors
        assert "test_imgs starts with sizes (2,)" in errors["two_sequences"], errors

        # cmd-ray's own network (pull: rebuilt from config.yaml, weights loaded) on the same arrays
        net, _ = registry.pull(uri, tracking_uri=registered.uri)
        x = {
            k: torch.from_numpy(arrays[f"{i}/in/{k}"])
            for k in ("train_imgs", "train_bb", "test_imgs", "test_proposals")
        }
        with torch.no_grad():
            out = net(x["train_imgs"], x["test_imgs"][None], x["train_bb"], x["test_proposals"][None])
        iou = out[0] if arch == "atom" else out[1][0]
        np.testing.assert_allclose(arrays[f"{i}/out/iou_pred"], iou.numpy(), rtol=0, atol=1e-5)
        if arch == "dimp":
            np.testing.assert_allclose(arrays[f"{i}/out/scores"], out[0][-1][0].numpy(), rtol=0, atol=1e-5)
            assert float(np.abs(out[0][-1][0]).max()) > 1e-3  # a real score map, not zeros on both sides

    # Every distribution the shipped code imports at module level is pinned, or required by a pin.
    local = _download(registered, tmp_path / "model")
    pinned = {Requirement(line).name for line in (local / "requirements.txt").read_text().split()}
    modules = [*(local / registry.CODE_DIR).rglob("*.py"), local / "pyfunc_model.py"]
    owners = importlib.metadata.packages_distributions()
    imported = set().union(*(_module_level_imports(m) for m in modules)) - set(sys.stdlib_module_names)
    imported -= {standalone.STANDALONE_PACKAGE}
    dists = {canonicalize_name(d) for name in imported for d in owners.get(name, [name])}
    assert {"torch", "torchvision", "numpy", "mlflow"} <= dists, dists  # mlflow's module is in 3 distributions
    unpinned = dists - _with_dependencies(pinned)
    assert not unpinned, f"imported by the shipped code but neither pinned nor required by a pin: {unpinned}"


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names a module imports when it is imported (its module-level import statements)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


# ------------------------------------------------------------------------------ evaluation scores on the version


def _synthetic_demo(root: Path) -> Path:
    """``root/data/demo/tir_sequences`` with two labeled 6-frame TIR sequences (what ``cmd-ray synth`` writes)."""
    from cmd_ray.data.synthetic import write_synthetic_dataset

    folder = root / "data" / "demo"
    if not (folder / "tir_sequences").is_dir():
        cfg = SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=2, sequence_length=6)
        write_synthetic_dataset(str(folder), cfg, progress=False)
    return folder / "tir_sequences"


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return found


def test_evaluation_tags_the_version_it_scored_and_logs_the_same_artifact_tree(registered, tmp_path):
    from cmd_ray.evaluation.benchmarks import read_benchmark
    from cmd_ray.evaluation.results import prepare_tracker_dir, write_result
    from cmd_ray.evaluation.runner import run_evaluation, tracker_meta

    root = _synthetic_demo(registered.root)
    results = tmp_path / "results"
    trackers = f"[{{name: static, kind: static}}, {{name: distilled, kind: dimp, model: '{registered.student.uri}'}}]"
    cfg = load_config(
        None,
        [
            f"mlflow.tracking_uri={registered.uri}",
            f"mlflow.experiment=eval-{tmp_path.name}",
            f"evaluation.root={root}",
            f"evaluation.results_dir={results}",
            f"evaluation.trackers={trackers}",
        ],
    )
    # Complete result files for every (tracker, sequence), as an earlier evaluation left them (meta.json first), so
    # the job only scores and logs (no Ray task runs): the ground truth for the model, frame 1's box for the static.
    sequences = read_benchmark("synthetic", str(root), None)
    for i, tracker in enumerate(cfg.evaluation.trackers):
        prepare_tracker_dir(results / tracker.name, tracker_meta(cfg, tracker, i, sequences))
    for seq in sequences:
        gt = np.asarray(seq.ground_truth, dtype=np.float64)
        write_result(results / "distilled", seq.name, gt, np.full(len(gt), 0.02))
        write_result(results / "static", seq.name, np.repeat(gt[:1], len(gt), axis=0), np.zeros(len(gt)))
    result = run_evaluation(cfg, progress=False)
    assert (result.tracked, result.skipped) == (0, 4)

    client = store_client(registered.uri)
    tags = client.get_model_version(STUDENT, registered.student.version).tags
    scores = result.scores["distilled"]
    assert float(tags["eval.synthetic.lsotb.success"]) == pytest.approx(scores.success, abs=1e-6)
    assert float(tags["eval.synthetic.lsotb.precision"]) == pytest.approx(scores.precision, abs=1e-6)
    assert float(tags["eval.synthetic.lsotb.norm_precision"]) == pytest.approx(scores.norm_precision, abs=1e-6)
    assert float(tags["eval.synthetic.lsotb.fps"]) == pytest.approx(50.0, rel=1e-3)
    assert tags["eval.synthetic.lsotb.run_id"] == result.run_id
    assert tags["eval.synthetic.lsotb.tracker"] == "distilled" and tags["eval.synthetic.lsotb.sequences"] == "2"
    assert scores.success > result.scores["static"].success  # the ground truth beats the static box
    teacher_tags = client.get_model_version(TEACHER, registered.teacher.version).tags
    assert not any(key.startswith("eval.") for key in teacher_tags)  # only the versions scored are tagged

    # The run's artifacts: the tables and per-sequence files, the plots and each tracker's folder, as before.
    expected = {"ope_tables.txt", "per_sequence.csv", "per_sequence.json"}
    expected |= {f"plots/{Path(p).name}" for p in result.plots}
    for name in ("static", "distilled"):
        expected |= {f"results/{name}/{f.name}" for f in (results / name).iterdir() if f.is_file()}
    assert len(result.plots) >= 2 and {"results/distilled/meta.json", "results/static/synth_tir_001.txt"} <= expected
    logged = _artifact_paths(client, result.run_id)
    assert logged == expected
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=result.run_id, dst_path=str(tmp_path / "logged"), tracking_uri=registered.uri
        )
    )
    for path in expected:
        source = results / path.removeprefix("results/")
        assert (local / path).read_bytes() == source.read_bytes(), path


# ------------------------------------------------------------------------------------------- docs/python-api.md


def test_python_api_doc_runs_as_written(registered, monkeypatch, capsys):
    """The code blocks of docs/python-api.md, run in order against the registered demo model in ``root``."""
    _synthetic_demo(registered.root)
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "python-api.md").read_text(), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(registered.root)  # the demo's working folder: mlflow.db and data/demo
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    result = namespace["result"]
    assert result.boxes.shape == (6, 4) and np.isfinite(result.boxes).all()
    gt = np.loadtxt(registered.root / "data/demo/tir_sequences/synth_tir_000/groundtruth_rect.txt", delimiter=",")
    np.testing.assert_allclose(result.boxes[0], gt[0])
    assert str(namespace["version"].version) == registered.student.version
    assert "variant: D3 loss from the teacher (distill.variant=D3" in capsys.readouterr().out


def test_a_missing_store_is_named_and_never_created(tmp_path, monkeypatch, capsys):
    """``cmd-ray registry pull`` only looks: a sqlite store that does not exist is reported (rc 2), not created."""
    from cmd_ray.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(registry.RegistryError, match=rf"MLflow store sqlite:///{tmp_path}/mlflow\.db does not exist"):
        registry.pull("models:/nonexistent@alias")
    rc = main(["registry", "pull", "models:/nonexistent@alias", "--out", "pulled"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("cmd-ray registry pull: models:/nonexistent@alias: MLflow store sqlite:///")
    assert "Traceback" not in err[0]
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no pulled/


def test_a_missing_entry_in_an_existing_store_gives_rc_2_naming_the_store(cfg, tmp_path, capsys):
    from cmd_ray.cli import main

    run_id = mlflow_runs.start_run(cfg, "makes-the-store")
    mlflow_runs.end_run(cfg, run_id)
    before = sorted(p.name for p in tmp_path.iterdir())
    store = cfg.mlflow.tracking_uri
    rc = main(
        ["registry", "pull", "models:/nonexistent@alias", "--out", str(tmp_path / "pulled"), "--tracking-uri", store]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cmd-ray")]  # MLflow logs too
    assert rc == 2 and len(err) == 1
    expected = f"models:/nonexistent@alias: no such registered model version in the MLflow store {store}"
    assert err[0].startswith(f"cmd-ray registry pull: {expected}")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
