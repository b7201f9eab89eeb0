"""docs/config.md is the output of ``cmd-ray config-reference``: every config key, its type, default and bounds."""

from __future__ import annotations

from pathlib import Path

from cmd_ray import cli
from cmd_ray.config import Config
from cmd_ray.vocabulary import VARIANTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _reference(capsys) -> str:
    assert cli.main(["config-reference"]) == 0
    return capsys.readouterr().out


def test_committed_reference_is_the_commands_output(capsys):
    generated = _reference(capsys)
    committed = DOC.read_text() if DOC.is_file() else ""
    assert committed == generated, (
        f"{DOC} is out of date with cmd_ray/config.py; regenerate it with: .venv/bin/{cli.REFERENCE_COMMAND}"
    )


def test_every_config_key_has_a_row_with_its_default(capsys):
    rows = {line.split(" | ")[0].removeprefix("| ").strip("`"): line for line in _reference(capsys).splitlines()}
    for key, value in Config().to_flat_dict().items():
        assert key in rows, f"{key} is missing from the reference"
        if isinstance(value, str) and value:
            assert f"| `{value}` |" in rows[key], (key, rows[key])
    for key in ("evaluation.trackers[].name", "evaluation.trackers[].kind", "evaluation.trackers[].model"):
        assert key in rows  # the fields of each item of a section list


def test_rows_give_allowed_values_bounds_and_descriptions(capsys):
    text = _reference(capsys)
    rows = {line.split(" | ")[0].removeprefix("| ").strip("`"): line.split(" | ") for line in text.splitlines()}
    type_, default, allowed = rows["distill.variant"][1:4]
    assert (type_, default) == ("str", "`D3`") and allowed == ", ".join(f"`{v}`" for v in VARIANTS)
    assert rows["data.sampling.num_proposals"][1:4] == ["int", "`8`", ">= 8; <= 128"]
    assert rows["mlflow.tracking_uri"][1] == "str \\| null"  # a pipe inside a table cell is escaped
    assert "pseudo targets" in rows["data.boxes"][4]
    assert rows["evaluation.trackers[].name"][2] == "required"
    assert "## `data.sampling`" in text and "## `tracker.augmentation`" in text
