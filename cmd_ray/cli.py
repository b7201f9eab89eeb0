"""The ``cmd-ray`` command: synth, boxes, distill, tune, table1, evaluate, compare, registry, config, variants,
merge, untrained.

Every command takes ``--config FILE`` and trailing dotted overrides
(``distill.lr_tcl=1e-6``). The config is validated before anything else runs,
so a wrong key or value fails in a second, naming the key.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cmd_ray.config import Config, ConfigError, dump_config, load_config
from cmd_ray.data.pairs import EmptyPrefixError, ManifestError
from cmd_ray.data.skip_limit import SkippedDataError
from cmd_ray.storage import StorageError, mask_credentials
from cmd_ray.train.epoch_line import epoch_line
from cmd_ray.vocabulary import START_TEACHER, VARIANTS, Variant

if TYPE_CHECKING:
    from cmd_ray.train.trainer import TrainingResult


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmd-ray", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the synthetic RGB/TIR data set (pairs and sequences)")
    synth.add_argument("--out", required=True, help="local folder or s3://bucket/prefix")
    _add_config_args(synth)

    boxes = commands.add_parser(
        "boxes", help="detect pseudo boxes once per pair (data.detector) and write a pair manifest with them"
    )
    boxes.add_argument("--out", required=True, help="manifest to write: *.parquet or *.csv (local or s3://)")
    _add_config_args(boxes)

    pretrain = commands.add_parser(
        "pretrain", help="train the RGB teacher on labeled sequences (Ray Train) and register it"
    )
    _add_config_args(pretrain)

    distill = commands.add_parser("distill", help="run cross-modal distillation (Ray Train) and register the model")
    _add_config_args(distill)

    sweep = commands.add_parser("tune", help="Ray Tune sweep over lr_bbe, lr_tcl and lambda")
    _add_config_args(sweep)

    table1 = commands.add_parser(
        "table1",
        help="the paper's Table 1: every row trained in dependency order (B3 and the D rows' start merged), "
        "evaluated on TIR, mean ± std over seeds; the best row registered",
    )
    table1.add_argument("--seeds", type=int, help="trainings per row (sets table1.seeds)")
    _add_config_args(table1)

    evaluate = commands.add_parser(
        "evaluate", help="OPE evaluation of evaluation.trackers on TIR sequences (one Ray task per sequence)"
    )
    _add_config_args(evaluate)

    compare = commands.add_parser(
        "compare", help="Table-1 style comparison (deltas to the first) and per-attribute table of result folders"
    )
    compare.add_argument(
        "results_dirs",
        nargs="+",
        metavar="RESULTS_DIR",
        help="a tracker's result folder (with meta.json, or plain <seq>.txt files) or a folder holding several",
    )
    compare.add_argument("--protocol", choices=("lsotb", "pytracking"), help="default: the first folder's")
    compare.add_argument("--plots", metavar="DIR", help="also write the success / precision plots (PNG) here")
    compare.add_argument("--benchmark", help="benchmark of the ground truth (default: from meta.json)")
    compare.add_argument("--root", help="the benchmark's folder or s3:// prefix (default: from meta.json)")
    compare.add_argument("--lsotb-subset", choices=("119", "120"), help="LSOTB-TIR set (default: meta.json's, 119)")
    compare.add_argument("--out", metavar="DIR", help="also write the tables and per-sequence CSV/JSON here")

    reg = commands.add_parser("registry", help="MLflow model registry")
    reg_commands = reg.add_subparsers(dest="registry_command", required=True)
    pull = reg_commands.add_parser("pull", help="fetch a registered model (models:/NAME@ALIAS) as weights + config")
    pull.add_argument("model_uri")
    pull.add_argument("--out", required=True, help="folder for config.yaml and state_dict.pt")
    pull.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")

    show = commands.add_parser("config", help="print the resolved config")
    _add_config_args(show)

    commands.add_parser(
        "config-reference", help="print the Markdown reference of every config key (docs/config.md is its output)"
    )

    commands.add_parser(
        "variants",
        help="list the paper's Table 1 variants: one line each, then the modules each trains through each branch",
    )

    untrained = commands.add_parser(
        "untrained",
        help="write the network as pretraining starts it (random init, seed pretrain.seed) as a state-dict file: "
        "the untrained baseline of an evaluation",
    )
    untrained.add_argument("--out", required=True, help="state-dict file to write (local or s3://)")
    _add_config_args(untrained)

    merge = commands.add_parser(
        "merge",
        help="combine distilled models by module: B3 (--reference B1 --test B2) or the D rows' start "
        "(--base B3 --tcl C1); any of the classifier and the two IoU-Net branches from any checkpoint",
    )
    merge.add_argument("--reference", help="B3 shorthand: the base, whose IoU-Net reference branch is kept (B1)")
    merge.add_argument("--test", help="B3 shorthand: the checkpoint whose IoU-Net test branch is taken (B2)")
    merge.add_argument("--base", help="the checkpoint every module not named below comes from")
    merge.add_argument("--tcl", help="take the target classifier (every TCL module) from this checkpoint")
    merge.add_argument("--bbe-reference", help="take the IoU-Net reference branch from this checkpoint")
    merge.add_argument("--bbe-test", help="take the IoU-Net test branch from this checkpoint")
    merge.add_argument("--out", required=True, help="where the merged checkpoint is written")
    return parser


def _synth(args: argparse.Namespace) -> int:
    from cmd_ray.data.synthetic import write_synthetic_dataset

    cfg = load_config(args.config, args.overrides)
    started = time.perf_counter()
    summary = write_synthetic_dataset(
        args.out, cfg.synth, endpoint_url=cfg.storage.s3_endpoint_url, progress=cfg.data.show_progress
    )
    print(f"synthetic data set written to {args.out} in {time.perf_counter() - started:.1f} s")
    print(summary)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from cmd_ray.train.trainer import list_pretraining_sequences, run_pretraining

    sequences = list_pretraining_sequences(cfg)
    frames = sum(len(s.frames) for s in sequences)
    started = time.perf_counter()
    result = run_pretraining(cfg, sequences)
    if not result.nothing_to_train:
        print(
            f"\nteacher pretraining finished in {time.perf_counter() - started:.1f} s on {len(sequences)} labeled "
            f"sequences ({frames} frames)"
        )
    _print_training(result, "skipped frames")
    return 0


def _distill(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from cmd_ray.data.distill_stream import list_pairs
    from cmd_ray.train.trainer import check_trainable, run_distillation

    check_trainable(cfg)
    pairs = list_pairs(cfg)
    validator = None
    if cfg.distill.select_by != "last":
        from cmd_ray.evaluation.validation import tracking_validator

        validator = tracking_validator(cfg)  # reads tune.eval_root now: a bad one fails before any cluster work
    started = time.perf_counter()
    result = run_distillation(cfg, pairs, tracking_validator=validator)
    if not result.nothing_to_train:
        print(f"\ndistillation finished in {time.perf_counter() - started:.1f} s on {len(pairs)} pairs")
    _print_training(result, "skipped pairs")
    return 0


def _print_training(result: TrainingResult, skipped_what: str) -> None:
    if result.nothing_to_train:
        print(f"\n{result.note}")
    if result.label:
        print(f"  trained:          {result.label}")
    if result.teacher is not None:
        lineage = f" (MLflow run {result.teacher.run_id})" if result.teacher.run_id else ""
        print(f"  starting weights: {result.teacher.describe()}{lineage}")
    if result.resumed_from_epoch is not None:
        print(f"  resumed at epoch {result.resumed_from_epoch} from the run's latest checkpoint")
    if result.history and "teacher_val_loss" in result.history[0]:
        print(f"  starting weights' val_loss: {result.history[0]['teacher_val_loss']:.4f}")
    if result.history and "teacher_val_success" in result.history[0]:
        first = result.history[0]
        print(
            f"  starting weights' val_success: {first['teacher_val_success']:.4f} "
            f"(precision {first['teacher_val_precision']:.4f})"
        )
    for row in result.history:
        print("  " + epoch_line(row))
    if not result.nothing_to_train:
        print(f"{skipped_what}: {result.skipped_pairs}")
    if result.fallback_boxes:
        print(f"no detection (centre box used instead): {result.fallback_boxes} pairs")
    if result.unpaired_files:
        print(f"files without a partner: {result.unpaired_files}")
    if result.resized_tir:
        print(f"TIR resized to its RGB partner's size: {result.resized_tir} pairs")
    print(f"checkpoint:    {result.checkpoint_path}")
    print(f"MLflow run:    {result.run_location or result.run_id or '(unknown)'}")
    if result.selection is not None:
        print(f"selected:      {result.selection.summary()}")
    if result.registered:
        reg = result.registered
        again = "; nothing new" if result.nothing_to_train else ""
        print(f"registered:    {reg.uri} (version {reg.version}{again})")
    elif result.nothing_to_train:
        print("registered:    nothing new")


def _tune(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from cmd_ray.data.distill_stream import list_pairs
    from cmd_ray.train.trainer import check_trainable
    from cmd_ray.tune import format_trial_table, run_sweep

    check_trainable(cfg)
    pairs = list_pairs(cfg)
    result = run_sweep(cfg, pairs)
    print(
        f"\nsweep of {cfg.distill.run_label} finished: {len(result.trial_run_ids)} trials, by {result.metric} "
        f"({result.mode}), best first"
    )
    print(format_trial_table(result))
    print(f"best trial:    {result.best_trial_id} {cfg.tune.metric}={result.best_metric:.4f} {result.best_params}")
    print(f"MLflow run:    {result.run_location}")
    print(f"registered:    {result.registered.uri} (version {result.registered.version})")
    return 0


def _table1(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *([f"table1.seeds={args.seeds}"] if args.seeds is not None else [])]
    cfg = load_config(args.config, overrides)
    from cmd_ray.evaluation.loading import ModelLoadError
    from cmd_ray.evaluation.results import ResultsError
    from cmd_ray.evaluation.runner import EvaluationError
    from cmd_ray.table1 import ROW_MEANINGS, run_table1

    started = time.perf_counter()
    try:
        result = run_table1(cfg)
    except (EvaluationError, ResultsError, ModelLoadError) as exc:
        print(f"cmd-ray: {mask_credentials(str(exc))}", file=sys.stderr)
        return 2
    print(f"\n{result.table}\n")
    for row in result.rows:
        print(f"  {row}: {ROW_MEANINGS[row]}")
    done_before = sum(r.done_before for r in result.runs if r.row != "A1")
    print(f"\nrows x seeds:  {len(result.runs) - 1} ({done_before} complete before this run, skipped)")
    print(f"best row:      {result.best_row}")
    print(f"registered:    {result.registered.uri} (version {result.registered.version})")
    print(f"MLflow run:    {result.run_location}")
    print(f"wall time:     {time.perf_counter() - started:.0f} s")
    return 0


def _untrained(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    import io

    import torch

    from cmd_ray import storage
    from cmd_ray.models.dimpnet import build_model

    torch.manual_seed(cfg.pretrain.seed)  # as the pretraining job's rank-0 worker seeds it before building the net
    buffer = io.BytesIO()
    torch.save(build_model(cfg).state_dict(), buffer)
    storage.write_bytes(args.out, buffer.getvalue(), cfg.storage.s3_endpoint_url)
    print(f"untrained {cfg.model.architecture}/{cfg.model.preset} network (seed {cfg.pretrain.seed}) -> {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from cmd_ray.evaluation.loading import ModelLoadError
    from cmd_ray.evaluation.results import ResultsError
    from cmd_ray.evaluation.runner import EvaluationError, run_evaluation

    try:
        result = run_evaluation(cfg, progress=cfg.data.show_progress)
    except (EvaluationError, ResultsError, ModelLoadError) as exc:
        print(f"cmd-ray evaluate: {mask_credentials(str(exc))}", file=sys.stderr)
        return 2
    print(
        f"\nevaluation finished in {result.wall_s:.1f} s: {result.num_sequences} sequences x "
        f"{len(result.scores)} trackers; {result.tracked} tracked ({result.tracking_wall_s:.1f} s), "
        f"{result.skipped} skipped (complete results)\n"
    )
    print(result.table)
    for extra in (result.paired_table, result.gap_table):
        if extra:
            print()
            print(extra)
    print()
    print(result.attribute_tables)
    print(f"\nresults:       {result.results_dir}")
    for path in result.plots:
        print(f"plot:          {path}")
    print(f"MLflow run:    {result.run_location}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from cmd_ray.evaluation.results import ResultsError, atomic_write_text, load_results, write_per_sequence
    from cmd_ray.evaluation.tables import format_attribute_table, format_comparison

    try:
        loaded = load_results(
            args.results_dirs, args.protocol, benchmark=args.benchmark, root=args.root, lsotb_subset=args.lsotb_subset
        )
    except ResultsError as exc:
        print(f"cmd-ray compare: {mask_credentials(str(exc))}", file=sys.stderr)
        return 2
    scores = {r.label: r.scores for r in loaded}
    benchmark = loaded[0].benchmark
    show_np = benchmark != "ptb"
    fps = {r.label: r.fps for r in loaded}
    tables = [format_comparison(scores, dataset=benchmark, show_norm_precision=show_np, fps=fps)]
    tables += [format_attribute_table(scores, metric) for metric in ("success", "precision")]
    print("\n\n".join(tables))
    if args.out:
        atomic_write_text(f"{args.out.rstrip('/')}/ope_tables.txt", "\n\n".join(tables) + "\n")
        for path in write_per_sequence(args.out, scores, {r.label: r.sequence_fps for r in loaded}, benchmark):
            print(f"per-sequence: {path}")
    if args.plots:
        from cmd_ray.evaluation.plots import write_plots

        for path in write_plots(scores, args.plots, benchmark, norm_precision=show_np):
            print(f"plot: {path}")
    return 0


def _registry(args: argparse.Namespace) -> int:
    from cmd_ray.models.loading import ModelLoadError
    from cmd_ray.registry import RegistryError, pull

    try:
        model, cfg = pull(args.model_uri, args.out, tracking_uri=args.tracking_uri)
    except (RegistryError, ModelLoadError) as exc:
        print(f"cmd-ray registry pull: {mask_credentials(str(exc))}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model_uri}: {type(model).__name__} ({params} parameters, "
        f"preset {cfg.model.preset}, backbone {cfg.model.backbone})"
    )
    print(f"written to {args.out}: config.yaml, state_dict.pt")
    return 0


def _config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    print(mask_credentials(dump_config(cfg)), end="")  # a password in a URI is not for the terminal
    for line in rate_notes(cfg):
        print(f"# {line}")
    return 0


def rate_notes(cfg: Config) -> list[str]:
    """What the distill rates resolve to and why: the row's paper rates times ``distill.lr_scale``, then each
    explicit rate that overrides them; and what the run is called (``D3``, ``D3 loss from the teacher``)."""
    d = cfg.distill
    variant = VARIANTS[d.variant]
    paper = d.paper_rates()

    def rate(key: str) -> str:
        if not getattr(variant, key):
            return f"{key}=0 (not trained)"
        return f"{key}={paper[key]:g}" + (f" = {getattr(variant, key):g} x {d.lr_scale:g}" if d.lr_scale != 1 else "")

    lines = [f"row {d.variant}'s paper rates x distill.lr_scale {d.lr_scale:g}: {rate('lr_tcl')}, {rate('lr_bbe')}"]
    for key, (value, row_rate) in d.rate_overrides().items():
        lines.append(f"distill.{key}={value:g} overrides row {d.variant}'s paper rate x lr_scale, {row_rate:g}")
    start = "the teacher" if d.start_kind == START_TEACHER else d.start_kind
    lines.append(f"this run is {d.run_label!r}: it starts from {start}")
    return lines


REFERENCE_COMMAND = "cmd-ray config-reference > docs/config.md"


def _type_text(annotation: Any) -> tuple[str, list[str]]:
    """``(type as written in YAML terms, allowed values)`` of a field annotation; Literals become their values."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return type(args[0]).__name__, [str(a) for a in args]
    if origin in (Union, UnionType):
        parts = [_type_text(a) for a in args]
        return " | ".join(t for t, _ in parts), [v for _, values in parts for v in values]
    if origin in (list, tuple, dict):
        parts = [_type_text(a) if a is not Ellipsis else ("...", []) for a in args]
        return f"{origin.__name__}[{', '.join(t for t, _ in parts)}]", [v for _, values in parts for v in values]
    if annotation is type(None):
        return "null", []
    return getattr(annotation, "__name__", str(annotation)), []


def _constraints(field: FieldInfo) -> list[str]:
    """Bounds and patterns of a field: ``>= 1``, ``< 1.0``, ``length >= 1``, ``matches ^…$``."""
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >=", "max_length": "length <="}
    out = []
    for item in field.metadata:
        for attr, word in words.items():
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{word} {value:g}" if isinstance(value, float) else f"{word} {value}")
        if getattr(item, "pattern", None):
            out.append(f"matches `{item.pattern}`")
    return out


def _default_text(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _markdown(text: str) -> str:
    """A docstring's reST markup as Markdown: ``x`` and :role:`x` become `x`."""
    return re.sub(r"(?::\w+:)?``?([^`]+)``?", r"`\1`", text)


def _escape(text: str, table: bool = True) -> str:
    """Text for Markdown: ``<x`` (an HTML tag to a renderer) and ``*`` (emphasis) escaped outside code spans; in
    a table cell also every pipe, and the text on one line."""
    parts = re.split(r"(`[^`]*`)", text)
    for i, part in enumerate(parts):
        if not part.startswith("`"):
            part = re.sub(r"(<(?=[A-Za-z/!?])|\*)", r"\\\1", part)
        parts[i] = part.replace("|", "\\|").replace("\n", " ") if table else part
    return "".join(parts)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config section class an annotation holds (itself, or the item of a list of sections)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return _model_of(item)
    return None


def config_reference() -> str:
    """The Markdown reference of :class:`cmd_ray.config.Config`: one table per section (nested sections and the
    items of section lists, e.g. ``evaluation.trackers[]``, get their own), a row per key with its type, default
    (the resolved defaults: presets applied), allowed values or bounds, and description. ``docs/config.md`` is
    this text; ``cmd-ray config-reference`` prints it."""
    defaults = Config().model_dump(mode="json")
    lines = [
        "# Configuration reference",
        "",
        f"Generated from the schema in `cmd_ray/config.py` by `{REFERENCE_COMMAND}`; do not edit by hand.",
        "Every key is set in a YAML file (`--config FILE`) or as a dotted override (`distill.lr_tcl=1e-6`);",
        "cross-field rules (e.g. `distill.bbe_loss=kl` needs `data.sampling.proposal_method=gmm`) are checked when",
        "the config is loaded and named in the error. Defaults are those of `cmd-ray config` with no file.",
    ]
    queue: list[tuple[str, type[BaseModel], Any]] = [
        (name, _model_of(f.annotation), defaults[name]) for name, f in Config.model_fields.items()
    ]
    while queue:
        key, model, section_defaults = queue.pop(0)
        lines += ["", f"## `{key}`", ""]
        doc = _escape(_markdown(inspect.cleandoc(model.__doc__ or "")), table=False)
        if doc:
            lines += [doc, ""]
        lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        nested = []
        for name, field in model.model_fields.items():
            dotted = f"{key}.{name}"
            sub = _model_of(field.annotation)
            if isinstance(section_defaults, dict) and name in section_defaults:
                value = section_defaults[name]
            else:  # an item of a section list: the field's own default
                value = None if field.is_required() else field.get_default(call_default_factory=True)
                value = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            if sub is not None and not isinstance(value, list):
                nested.append((dotted, sub, value))
                lines.append(f"| `{dotted}` | section | | | see [`{dotted}`](#{dotted.replace('.', '')}) |")
                continue
            type_text, allowed = _type_text(field.annotation)
            allowed_text = "; ".join(filter(None, [", ".join(f"`{v}`" for v in allowed), *_constraints(field)]))
            if sub is not None:  # a list of sections: its items are described below
                nested.append((f"{dotted}[]", sub, None))
                allowed_text = f"items: see [`{dotted}[]`](#{dotted.replace('.', '')})"
            default = "required" if field.is_required() else _default_text(value)
            row = [f"`{dotted}`", type_text, default, allowed_text, field.description or ""]
            lines.append("| " + " | ".join(_escape(cell) for cell in row) + " |")
        queue[:0] = nested
    return "\n".join(lines) + "\n"


def _config_reference(args: argparse.Namespace) -> int:
    print(config_reference(), end="")
    return 0


def _trains_text(variant: Variant) -> str:
    if variant.is_merge:
        return "merge " + "+".join(f"{module}:{branch}<-{src}" for module, branch, src in variant.merge_of)
    if not variant.trains_anything:
        return "nothing"
    return f"tcl:{variant.train_tcl or '-'} bbe:{variant.train_bbe or '-'}"


def format_variant(variant: Variant, trains_width: int = 0) -> str:
    """One line: name, reference/test modality, what is trained (or merged), box method, the paper's rates."""
    rates = f"lr_tcl={variant.lr_tcl:g} lr_bbe={variant.lr_bbe:g}"
    return (
        f"{variant.name}  ref={variant.reference_modality:<3}  test={variant.test_modality:<3}  "
        f"trains={_trains_text(variant):<{trains_width}}  boxes={variant.box_method:<9}  {rates:<26}  "
        f"{variant.meaning}"
    )


def _module_list(names: Sequence[str]) -> str:
    """``classifier.{feature_extractor,filter_initializer}`` style: module names grouped under their parent."""
    parents: dict[str, list[str]] = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        parents.setdefault(parent, []).append(child)
    return " ".join(
        f"{parent}.{children[0]}" if len(children) == 1 else f"{parent}.{{{','.join(children)}}}"
        for parent, children in parents.items()
    )


def format_trained_modules(variant: Variant) -> str:
    """Which modules the row trains through each branch (``Variant.trained_modules``); a module listed under
    both branches runs on both frames and learns through both; ``-``: none."""
    if not variant.trained_modules:
        return "gradients: none"
    sides = []
    for side in ("reference", "test"):
        names = [name for name, branch in variant.trained_modules.items() if branch in (side, "both")]
        sides.append(f"{side} branch: {_module_list(names) if names else '-'}")
    return "gradients through the " + "; ".join(sides)


def _variants(args: argparse.Namespace) -> int:
    width = max(len(_trains_text(v)) for v in VARIANTS.values())
    for variant in VARIANTS.values():
        print(format_variant(variant, width))
        print(f"    {format_trained_modules(variant)}")
    return 0


def _boxes(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from cmd_ray.data.box_precompute import precompute_boxes
    from cmd_ray.data.detect import DetectorUnavailableError, DetectorWeightsError, build_detector
    from cmd_ray.data.distill_stream import list_pairs
    from cmd_ray.data.pairs import manifest_format

    manifest_format(args.out)
    try:
        build_detector(cfg.data, cfg.storage.s3_endpoint_url)  # fails before any cluster work: no HOG, bad weights
    except (DetectorUnavailableError, DetectorWeightsError) as exc:
        print(f"cmd-ray boxes: {mask_credentials(str(exc))}", file=sys.stderr)
        return 2
    pairs = list_pairs(cfg)
    started = time.perf_counter()
    summary = precompute_boxes(cfg, args.out, pairs)
    print(
        f"boxes of {summary.pairs} pairs ({cfg.data.detector} detector) written to {summary.uri} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    print(f"  with boxes:   {summary.with_boxes}")
    print(f"  no detection: {summary.no_detection} (training uses the centre box for these and counts them)")
    print(f"  unreadable:   {summary.unreadable}" + "".join(f"\n    {line}" for line in summary.unreadable_examples))
    print(f"train on it with: data.layout=manifest data.manifest={summary.uri} data.boxes=detection")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from cmd_ray.distill import merge  # imported here: cli import must never depend on it

    parts = {"tcl": args.tcl, "bbe_reference": args.bbe_reference, "bbe_test": args.bbe_test}
    shorthand = args.reference is not None or args.test is not None
    if shorthand and (args.base is not None or any(parts.values())):
        print("cmd-ray merge: use --reference/--test (B3) or --base with --tcl/--bbe-*, not both", file=sys.stderr)
        return 2
    if shorthand and (args.reference is None or args.test is None):
        print("cmd-ray merge: the B3 shorthand needs both --reference and --test", file=sys.stderr)
        return 2
    if not shorthand and (args.base is None or not any(parts.values())):
        print("cmd-ray merge: give --base and at least one of --tcl, --bbe-reference, --bbe-test", file=sys.stderr)
        return 2
    try:
        if shorthand:
            written = merge.merge_branches(args.reference, args.test, args.out)
        else:
            written = merge.merge_modules(args.base, args.out, **parts)
    except (ValueError, OSError) as exc:  # CheckpointError is a ValueError
        print(f"cmd-ray merge: {mask_credentials(str(exc))}", file=sys.stderr)
        return 2
    if shorthand:
        print(f"merged (B3): IoU-Net reference branch from {args.reference}, test branch from {args.test} -> {written}")
    else:
        taken = ", ".join(f"{part} from {path}" for part, path in parts.items() if path)
        print(f"merged: {args.base} with {taken} -> {written}")
    return 0


class MaskCredentials(logging.Filter):
    """A handler filter that masks credentials inside URIs in every record it passes
    (:func:`cmd_ray.storage.mask_credentials`): whatever module logs a tracking URI or data URI, the password of
    ``https://user:pw@host`` does not reach the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_credentials(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def _mask_log_handlers() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskCredentials) for f in handler.filters):
            handler.addFilter(MaskCredentials())


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _mask_log_handlers()
    if not sys.stderr.isatty():  # MLflow's download bars too, like data.progress: null, stay off in a log file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = build_parser().parse_args(argv)
    handlers = {
        "synth": _synth,
        "boxes": _boxes,
        "pretrain": _pretrain,
        "distill": _distill,
        "tune": _tune,
        "table1": _table1,
        "evaluate": _evaluate,
        "compare": _compare,
        "registry": _registry,
        "config": _config,
        "config-reference": _config_reference,
        "variants": _variants,
        "untrained": _untrained,
        "merge": _merge,
    }
    try:
        return handlers[args.command](args)
    except (ConfigError, EmptyPrefixError, ManifestError, StorageError, SkippedDataError) as exc:
        print(f"cmd-ray: {mask_credentials(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
