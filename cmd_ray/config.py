"""Typed, validated configuration: one source of truth for every knob.

A config is read from YAML, then dotted ``key=value`` overrides are applied
(``distill.lr_tcl=1e-6``), then the whole tree is validated. Unknown keys and
invalid values raise :class:`ConfigError` naming the dotted key and what is
allowed, before any cluster work starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

VARIANTS = ("A1", "B1", "B2", "B3", "C1", "D1", "D2", "D3", "D4", "D5")
VariantName = Literal["A1", "B1", "B2", "B3", "C1", "D1", "D2", "D3", "D4", "D5"]

PresetName = Literal["tiny", "dimp18", "dimp50", "superdimp", "atom18", "atom50"]
PRESETS: dict[str, tuple[str, ...]] = {
    "dimp": ("tiny", "dimp18", "dimp50", "superdimp"),
    "atom": ("tiny", "atom18", "atom50"),
}
"""Network presets allowed per ``model.architecture`` (see :mod:`cmd_ray.models.dimpnet`)."""
PRESET_BACKBONE = {
    "tiny": "tiny",
    "dimp18": "resnet18",
    "dimp50": "resnet50",
    "superdimp": "resnet50",
    "atom18": "resnet18",
    "atom50": "resnet50",
}


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Strict):
    """Synthetic data set written by ``cmd-ray synth``."""

    num_pairs: int = Field(200, ge=1, description="unlabeled aligned RGB/TIR pairs")
    image_width: int = Field(160, ge=32)
    image_height: int = Field(128, ge=32)
    num_rgb_sequences: int = Field(4, ge=0, description="labeled RGB sequences (teacher training)")
    num_tir_sequences: int = Field(4, ge=0, description="labeled TIR sequences (evaluation)")
    sequence_length: int = Field(30, ge=2)
    seed: int = 0


class SamplingConfig(_Strict):
    """DiMP training-sample geometry: search-area crops, labels and IoU proposals."""

    search_area_factor: float = Field(5.0, gt=1.0, description="crop side / sqrt(box area)")
    output_sz: int = Field(128, ge=32, description="crop side in pixels")
    feature_stride: int = Field(16, ge=1, description="stride of the classifier feature map")
    filter_size: int = Field(4, ge=1)
    center_jitter_factor: float = Field(3.0, ge=0.0)
    scale_jitter_factor: float = Field(0.25, ge=0.0)
    label_sigma_factor: float = Field(0.25, gt=0.0, description="sigma / target size, in feature cells")
    num_proposals: int = Field(8, ge=1, le=128)
    proposal_method: Literal["perturb", "gmm"] = Field(
        "perturb",
        description="'perturb': ATOM/DiMP jittered boxes above min_proposal_iou (IoU targets); "
        "'gmm': SuperDiMP boxes from a Gaussian mixture, adding proposal_density and gt_density (KL box loss)",
    )
    proposal_sigma_factors: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2, 0.3])
    min_proposal_iou: float = Field(0.1, ge=0.0, lt=1.0)
    gmm_proposal_sigma: list[tuple[float, float]] = Field(
        default_factory=lambda: [(0.05, 0.05), (0.5, 0.5)],
        description="'gmm': (centre, size) std of each mixture component, relative to the box size / in log size",
    )
    gmm_gt_sigma: tuple[float, float] = Field(
        (0.05, 0.05), description="'gmm': (centre, size) std of the ground-truth box density"
    )

    @model_validator(mode="after")
    def _crop_divides(self) -> SamplingConfig:
        if self.output_sz % self.feature_stride:
            raise ValueError(
                f"output_sz ({self.output_sz}) must be a multiple of feature_stride ({self.feature_stride})"
            )
        if not self.proposal_sigma_factors or min(self.proposal_sigma_factors) <= 0:
            raise ValueError("proposal_sigma_factors must be a non-empty list of positive numbers")
        if not self.gmm_proposal_sigma or min(min(pair) for pair in self.gmm_proposal_sigma) <= 0:
            raise ValueError("gmm_proposal_sigma must be a non-empty list of positive (centre, size) pairs")
        if min(self.gmm_gt_sigma) <= 0:
            raise ValueError("gmm_gt_sigma must be a positive (centre, size) pair")
        return self

    @property
    def feature_sz(self) -> int:
        return self.output_sz // self.feature_stride

    @property
    def label_sz(self) -> int:
        """Side of the score/label map: an even filter adds one cell."""
        return self.feature_sz + (self.filter_size + 1) % 2


class DataConfig(_Strict):
    """Where the unlabeled pairs live and how training samples are cut from them."""

    uri: str = Field("data/demo/pairs", description="local path, file:// or s3://bucket/prefix of the pair set")
    layout: Literal["two_folder"] = "two_folder"
    rgb_dir: str = "rgb"
    tir_dir: str = "tir"
    boxes: Literal["center"] = "center"
    center_box_fraction: float = Field(0.3, gt=0.0, le=1.0, description="box side / min(H, W)")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of pairs held out for validation")
    num_actors: int = Field(1, ge=1, description="Ray Data actors that decode and crop")
    cpus_per_actor: float = Field(0.5, gt=0.0)


class ModelConfig(_Strict):
    """The network: ``architecture`` (DiMP or ATOM) and a ``preset`` of its layer sizes and classifier settings.

    Presets (:mod:`cmd_ray.models.dimpnet`): ``dimp`` allows ``tiny``, ``dimp18``, ``dimp50``,
    ``superdimp``; ``atom`` allows ``tiny``, ``atom18``, ``atom50``. The backbone follows from the
    preset (:attr:`backbone`).
    """

    architecture: Literal["dimp", "atom"] = "dimp"
    preset: PresetName = Field("tiny", description="layer sizes and classifier settings; implies the backbone")
    init_checkpoint: str | None = Field(None, description="teacher weights (URI of a cmd-ray or pytracking file)")
    trainable_backbone_layers: list[Literal["conv1", "layer1", "layer2", "layer3"]] = Field(
        default_factory=list, description="backbone stages to train (default: all frozen, BatchNorm stats too)"
    )

    @model_validator(mode="before")
    @classmethod
    def _backbone_was_renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "backbone" in data:
            raise ValueError(
                "model.backbone was replaced by model.preset "
                f"(dimp: {', '.join(PRESETS['dimp'])}; atom: {', '.join(PRESETS['atom'])})"
            )
        return data

    @model_validator(mode="after")
    def _preset_fits_architecture(self) -> ModelConfig:
        if self.preset not in PRESETS[self.architecture]:
            other = next(arch for arch, names in PRESETS.items() if self.preset in names)
            raise ValueError(
                f"model.preset {self.preset!r} is not one of the {self.architecture} presets (it belongs to {other}); "
                f"allowed for {self.architecture}: {', '.join(PRESETS[self.architecture])}"
            )
        return self

    @property
    def backbone(self) -> str:
        """The backbone the preset uses: ``"tiny"``, ``"resnet18"`` or ``"resnet50"``."""
        return PRESET_BACKBONE[self.preset]


class TclWeights(_Strict):
    """Weights of the TCL loss per filter iterate (pytracking: test_init_clf, test_iter_clf, test_clf)."""

    init: float = Field(100.0, ge=0.0, description="score map of the initial filter")
    iter: float = Field(400.0, ge=0.0, description="shared equally by the intermediate filter iterates")
    final: float = Field(100.0, ge=0.0, description="score map of the final filter")


class DistillConfig(_Strict):
    """The CMD schedule: L = L_TCL + lambda * L_BBE with per-module learning rates."""

    variant: VariantName = "D3"
    lr_tcl: float = Field(2e-8, gt=0.0)
    lr_bbe: float = Field(1e-7, gt=0.0)
    lr_backbone: float = Field(1e-7, gt=0.0, description="for model.trainable_backbone_layers, if any")
    loss_weight_bbe: float = Field(1.0, ge=0.0, description="lambda of Eq. 1 (SuperDiMP's KL box weight: 0.01)")
    tcl_loss: Literal["lbhinge", "squared"] = Field(
        "lbhinge",
        description="data term of L_TCL: 'lbhinge' (DiMP: squared error, hinged on the background) or 'squared' "
        "(Eq. 2 as written: plain squared error against the Gaussian label)",
    )
    tcl_weights: TclWeights = Field(default_factory=TclWeights)
    hinge_threshold: float = Field(0.05, description="'lbhinge': label value below which a cell is background")
    filter_reg_mu: float = Field(0.0, ge=0.0, description="mu of Eq. 2: adds mu * |final filter|^2 to L_TCL")
    bbe_loss: Literal["mse", "kl"] = Field(
        "mse",
        description="data term of L_BBE: 'mse' (Eq. 3: squared error against 2*IoU-1) or 'kl' (SuperDiMP's KL "
        "box regression; needs data.sampling.proposal_method=gmm)",
    )
    bbe_reg_nu: float = Field(0.0, ge=0.0, description="nu of Eq. 3: adds nu * |trained BBE parameters|^2 to L_BBE")
    epochs: int = Field(50, ge=1)
    samples_per_epoch: int = Field(26000, ge=1)
    batch_size: int = Field(5, ge=1, description="pairs per worker per step")
    val_samples: int = Field(64, ge=0, description="fixed validation samples scored every epoch (0: none)")
    lr_step: int = Field(15, ge=1, description="epochs between learning-rate decays")
    lr_gamma: float = Field(0.5, gt=0.0, le=1.0)
    seed: int = 0


class ScalingSettings(_Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    amp: bool = Field(False, description="bf16/fp16 autocast on GPU workers; ignored on CPU")


class StorageConfig(_Strict):
    storage_path: str = Field("ray_results", description="checkpoints: local path or s3://bucket/prefix")
    run_name: str = Field("cmd-distill", min_length=1)
    s3_endpoint_url: str | None = Field(None, description="overrides AWS_ENDPOINT_URL for s3:// URIs")
    checkpoints_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(None, description="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str = Field("cmd-ray", min_length=1)
    registered_model_name: str = Field("cmd-ray-tracker", min_length=1)
    alias: str = Field("candidate", pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class TuneSettings(_Strict):
    """Ray Tune sweep over lr_bbe, lr_tcl and lambda (log-uniform ranges)."""

    num_samples: int = Field(3, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    lr_tcl: tuple[float, float] = (1e-8, 1e-6)
    lr_bbe: tuple[float, float] = (1e-8, 1e-6)
    loss_weight_bbe: tuple[float, float] = (0.1, 10.0)
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: int = Field(2, ge=2)
    metric: Literal["val_loss", "loss", "loss_tcl", "loss_bbe"] = "val_loss"
    trial_cpus: float = Field(0.1, gt=0.0, description="CPU share of the trial function itself")

    @model_validator(mode="after")
    def _ranges(self) -> TuneSettings:
        for name in ("lr_tcl", "lr_bbe", "loss_weight_bbe"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} range must satisfy 0 < low <= high, got [{low}, {high}]")
        return self


class PretrainConfig(_Strict):
    """Supervised RGB teacher training on labeled sequences (``jobs/pretrain.py``)."""


class TrackerConfig(_Strict):
    """Online DiMP tracker parameters (:mod:`cmd_ray.tracking`)."""


class EvaluationConfig(_Strict):
    """OPE evaluation on TIR sequences (``jobs/evaluate.py``, :mod:`cmd_ray.evaluation.runner`)."""


class Config(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _epoch_fits_workers(self) -> Config:
        global_batch = self.distill.batch_size * self.scaling.num_workers
        if self.distill.samples_per_epoch < global_batch:
            raise ValueError(
                f"distill.samples_per_epoch ({self.distill.samples_per_epoch}) is smaller than one global batch "
                f"(distill.batch_size {self.distill.batch_size} x scaling.num_workers {self.scaling.num_workers})"
            )
        return self

    @model_validator(mode="after")
    def _losses_fit_model_and_data(self) -> Config:
        from cmd_ray.distill.variants import get_variant

        if self.model.architecture == "atom":
            variant = get_variant(self.distill.variant)
            if variant.train_tcl is not None:
                raise ValueError(
                    f"distill.variant {variant.name} trains the target classifier (TCL), which model.architecture="
                    "atom does not have; ATOM runs A1, B1, B2 (and B3 by merging B1 and B2)"
                )
            if self.tune.metric == "loss_tcl":
                raise ValueError("tune.metric=loss_tcl is always 0 for model.architecture=atom")
        if self.distill.bbe_loss == "kl" and self.data.sampling.proposal_method != "gmm":
            raise ValueError(
                "distill.bbe_loss=kl needs proposal densities: set data.sampling.proposal_method=gmm "
                f"(got {self.data.sampling.proposal_method!r})"
            )
        return self

    @model_validator(mode="after")
    def _validation_is_consistent(self) -> Config:
        if self.tune.metric == "val_loss" and not (self.distill.val_samples and self.data.val_fraction):
            raise ValueError(
                "tune.metric=val_loss needs a validation split: set distill.val_samples > 0 and data.val_fraction > 0"
            )
        return self

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on every worker (the global batch divides the epoch)."""
        return self.distill.samples_per_epoch // (self.distill.batch_size * self.scaling.num_workers)

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted keys to plain values, for MLflow params."""
        return _flatten(self.model_dump(mode="json"))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _known_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``1e-6``, ``true``, ``[1, 2]``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    dotted, raw = override.split("=", 1)
    parts = dotted.strip().split(".")
    node: dict[str, Any] = tree
    schema: type[BaseModel] | None = Config
    for i, part in enumerate(parts):
        if schema is not None and part not in schema.model_fields:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(
                f"unknown config key {dotted!r}: {where} has no {part!r}; allowed: {', '.join(_known_keys(schema))}"
            )
        annotation = schema.model_fields[part].annotation if schema is not None else None
        schema = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if i == len(parts) - 1:
            node[part] = yaml.safe_load(raw) if raw.strip() else None
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate.

    Raises:
        ConfigError: naming the file, the dotted key and what is allowed.
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(loaded).__name__}")
        tree = copy.deepcopy(loaded)
    for override in overrides:
        apply_override(tree, override)
        source += f" + {override.split('=', 1)[0]}"
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what a run was started with)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
