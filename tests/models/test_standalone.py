"""The standalone copy of the network code that a logged model ships (cmd_ray.models.standalone), and the network
spec it rebuilds networks from; no MLflow here (tests/test_registry.py loads the copy in a process without cmd_ray)."""

import json
import subprocess
import sys
import sysconfig

import pytest
import torch

from cmd_ray.config import load_config
from cmd_ray.models import standalone
from cmd_ray.models.dimpnet import build_model, build_network, network_spec


def test_renaming_touches_the_import_statements_and_nothing_else():
    source = (
        '"""Uses :mod:`cmd_ray.models.prroi`."""\n'
        "from typing import TYPE_CHECKING\n"
        "from cmd_ray.models.pooling import pool_boxes\n"
        "from cmd_ray import vocabulary\n"
        "from cmd_rayish import other\n"
        "if TYPE_CHECKING:\n"
        "    from cmd_ray.config import (\n"
        "        Config,\n"
        "    )\n"
        "NAME = 'from cmd_ray.x import y'\n"
    )
    renamed = standalone.renamed_source(source)
    assert renamed.splitlines() == [
        '"""Uses :mod:`cmd_ray.models.prroi`."""',
        "from typing import TYPE_CHECKING",
        "from cmd_ray_net.models.pooling import pool_boxes",
        "from cmd_ray_net import vocabulary",
        "from cmd_rayish import other",
        "if TYPE_CHECKING:",
        "    from cmd_ray_net.config import (",
        "        Config,",
        "    )",
        "NAME = 'from cmd_ray.x import y'",
    ]


def test_an_import_that_cannot_be_renamed_by_its_line_is_refused():
    with pytest.raises(ValueError, match="'import cmd_ray…' cannot be renamed"):
        standalone.renamed_source("import cmd_ray.models.prroi\nx = cmd_ray.models.prroi\n", "m.py")
    with pytest.raises(ValueError, match="cannot rename the import"):
        standalone.renamed_source("from \\\n    cmd_ray import storage\n", "m.py")


def test_closure_follows_runtime_imports_only():
    closure = standalone.module_closure()
    assert closure == [
        "cmd_ray",
        "cmd_ray.models",
        "cmd_ray.models.backbone",
        "cmd_ray.models.classifier",
        "cmd_ray.models.dimpnet",
        "cmd_ray.models.iounet",
        "cmd_ray.models.pooling",
        "cmd_ray.models.prroi",
        "cmd_ray.vocabulary",
    ]  # dimpnet's `if TYPE_CHECKING: from cmd_ray.config import Config` pulls in no config (nor pydantic)
    assert standalone.cmd_ray_imports("cmd_ray.models.dimpnet") >= {"cmd_ray.vocabulary", "cmd_ray.models.iounet"}
    assert "cmd_ray.config" not in standalone.cmd_ray_imports("cmd_ray.models.dimpnet")


def test_the_copy_imports_and_builds_the_same_network_without_cmd_ray(tmp_path):
    """The written package, imported by a python that cannot import cmd_ray, builds each DiMP preset's network
    with cmd-ray's parameter names and shapes."""
    package = standalone.write_standalone_package(tmp_path / "code", "9.9")
    assert package == tmp_path / "code" / "cmd_ray_net" and "cmd-ray 9.9" in (package / "__init__.py").read_text()
    with pytest.raises(FileExistsError):
        standalone.write_standalone_package(tmp_path / "code")
    specs = {}
    for preset in ("tiny", "dimp18", "dimp50"):
        cfg = load_config(None, [f"model.preset={preset}"])
        shapes = {k: list(v.shape) for k, v in build_model(cfg).state_dict().items()}
        specs[preset] = (network_spec(cfg), shapes)
    script = (
        "import importlib.util, json, sys\n"
        "assert importlib.util.find_spec('cmd_ray') is None\n"
        "from cmd_ray_net.models.dimpnet import build_network\n"
        "specs = json.loads(sys.argv[1])\n"
        "print(json.dumps({p: {k: list(v.shape) for k, v in build_network(s).state_dict().items()}"
        " for p, (s, _) in specs.items()}))\n"
    )
    # -I: no PYTHONPATH, working folder or user site; -S: no site-packages .pth (the editable cmd_ray install)
    site_packages = sysconfig.get_paths()["purelib"]
    code = f"import sys; sys.path[:0] = [{str(tmp_path / 'code')!r}]; sys.path.append({site_packages!r})\n"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code + script, json.dumps(specs)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads(proc.stdout)
    for preset, (_, shapes) in specs.items():
        assert built[preset] == shapes, preset


def test_network_spec_round_trips_through_json_to_the_same_network():
    cfg = load_config(None, ["data.sampling.search_area_factor=6.0", "data.sampling.output_sz=352"])
    spec = json.loads(json.dumps({**network_spec(cfg), "image_size": 352}))  # extra keys are ignored
    torch.manual_seed(1)
    expected = build_model(cfg).state_dict()
    torch.manual_seed(1)
    got = build_network(spec).state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert network_spec(load_config(None, ["model.architecture=atom", "distill.variant=B1"])) == {
        "architecture": "atom",
        "preset": "tiny",
    }
    with pytest.raises(ValueError, match="lacks init_gauss_sigma"):
        build_network({k: v for k, v in spec.items() if k != "init_gauss_sigma"})
    with pytest.raises(ValueError, match="unknown dimp preset 'dimp34'"):
        build_network({**spec, "preset": "dimp34"})
