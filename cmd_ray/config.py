"""Typed, validated configuration: one source of truth for every knob.

A config is read from YAML, then dotted ``key=value`` overrides are applied
(``distill.lr_tcl=1e-6``), then the whole tree is validated. Unknown keys and
invalid values raise :class:`ConfigError` naming the dotted key and what is
allowed, before any cluster work starts.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cmd_ray import vocabulary
from cmd_ray.vocabulary import MODEL_PRESETS as PRESETS
from cmd_ray.vocabulary import PRESET_BACKBONE, get_variant

# The allowed values of the choices below are the names of cmd_ray.vocabulary (Literal of a tuple: its members).
VariantName = Literal[vocabulary.VARIANT_NAMES]
PresetName = Literal[vocabulary.MODEL_PRESET_NAMES]
ArchitectureName = Literal[vocabulary.ARCHITECTURES]
BoxMethodName = Literal[vocabulary.BOX_METHODS]
TclLossForm = Literal[vocabulary.TCL_LOSS_FORMS]
MixingName = Literal[vocabulary.MIXINGS]
BbeLossForm = Literal[vocabulary.BBE_LOSS_FORMS]
BenchmarkName = Literal[vocabulary.BENCHMARKS]
SamplingPresetName = Literal[("custom", *vocabulary.SAMPLING_PRESETS)]
TrackerPresetName = Literal[vocabulary.TRACKER_PRESETS]

BackboneStage = Literal["conv1", "layer1", "layer2", "layer3"]


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$"


def check_label_selector(selector: dict[str, str], field: str) -> dict[str, str]:
    """Fail on a Ray label key that Ray would reject (``[prefix/]name``, name ≤ 63 alphanumerics, ``-_.``).

    Values may use Ray's selector forms (``value``, ``!value``, ``in(a,b)``, ``!in(a,b)``); they must not be
    empty or hold whitespace. ``field`` names the config key in the message.
    """
    import re

    for key, value in selector.items():
        if not re.fullmatch(_LABEL_KEY, key):
            raise ValueError(f"{field}: {key!r} is not a valid Ray label key ([prefix/]name, e.g. cmd-ray.role)")
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"{field}.{key}: {value!r} is not a label value (e.g. data, !train, in(a,b))")
    return selector


class SynthConfig(_Strict):
    """Synthetic data set written by ``cmd-ray synth``."""

    num_pairs: int = Field(200, ge=1, description="unlabeled aligned RGB/TIR pairs")
    image_width: int = Field(160, ge=32)
    image_height: int = Field(128, ge=32)
    num_rgb_sequences: int = Field(4, ge=0, description="labeled RGB sequences (teacher training)")
    num_tir_sequences: int = Field(4, ge=0, description="labeled TIR sequences (the evaluation's test split)")
    rgb_twins: bool = Field(
        True, description="also write the pixel-aligned RGB twin of each test sequence (tir_sequences_rgb/)"
    )
    num_tir_val_sequences: int = Field(
        0, ge=0, description="labeled TIR validation split (tir_val_sequences/): tuning and epoch selection"
    )
    num_tir_train_sequences: int = Field(
        0, ge=0, description="labeled TIR training split (tir_train_sequences/): the supervised upper bound"
    )
    sequence_length: int = Field(30, ge=2)
    heat_decoys: tuple[int, int] = Field(
        (2, 5),
        description="fewest and most hot TIR-only decoys (vents, exhaust, heated metal) near the target of each scene; "
        "(0, 0): none (docs/synthetic.md)",
    )
    seed: int = 0

    @field_validator("heat_decoys")
    @classmethod
    def _decoy_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] < 0 or value[1] < value[0]:
            raise ValueError(f"must be (fewest, most) with 0 <= fewest <= most, got {value}")
        return value


SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    # pytracking ltr/train_settings/dimp/dimp50.py: feature 18 at stride 16, jitter {'train': 3, 'test': 4.5} and
    # {'train': 0.25, 'test': 0.5}, output_sigma_factor 1/4, 8 perturbed boxes (min IoU 0.1), replicate padding
    "dimp50": {
        "search_area_factor": 5.0,
        "output_sz": 288,
        "feature_stride": 16,
        "filter_size": 4,
        "crop_mode": "replicate",
        "max_scale_change": None,
        "reference_center_jitter_factor": 3.0,
        "test_center_jitter_factor": 4.5,
        "reference_scale_jitter_factor": 0.25,
        "test_scale_jitter_factor": 0.5,
        "label_sigma_factor": 0.25,
        "num_proposals": 8,
        "proposal_method": "perturb",
        "proposal_sigma_factors": [0.01, 0.05, 0.1, 0.2, 0.3],
        "min_proposal_iou": 0.1,
    },
    # pytracking ltr/train_settings/dimp/super_dimp.py: feature 22 at stride 16, jitter {'train': 3, 'test': 5.5}
    # and {'train': 0.25, 'test': 0.5}, 'inside_major' crops with max_scale_change 1.5, 128 GMM boxes
    "superdimp": {
        "search_area_factor": 6.0,
        "output_sz": 352,
        "feature_stride": 16,
        "filter_size": 4,
        "crop_mode": "inside_major",
        "max_scale_change": 1.5,
        "reference_center_jitter_factor": 3.0,
        "test_center_jitter_factor": 5.5,
        "reference_scale_jitter_factor": 0.25,
        "test_scale_jitter_factor": 0.5,
        "label_sigma_factor": 0.25,
        "num_proposals": 128,
        "proposal_method": "gmm",
        "gmm_proposal_sigma": [(0.05, 0.05), (0.5, 0.5)],
        "gmm_gt_sigma": (0.05, 0.05),
    },
}
"""``data.sampling.preset``: the fields each named preset fills when the config does not set them."""

_LEGACY_JITTER_KEYS = {
    "center_jitter_factor": ("reference_center_jitter_factor", "test_center_jitter_factor"),
    "scale_jitter_factor": ("reference_scale_jitter_factor", "test_scale_jitter_factor"),
}


class SamplingConfig(_Strict):
    """DiMP training-sample geometry: search-area crops, labels and IoU proposals.

    ``preset`` (``dimp50``, ``superdimp``) fills every field the config leaves unset from
    :data:`SAMPLING_PRESETS`; fields set explicitly win (the preset applies when the config is built,
    not on later assignment). ``custom`` (default) uses the field defaults below.

    DiMP jitters the two frames of a sample differently: the reference (train) frame by
    ``reference_*_jitter_factor`` and the test frame by ``test_*_jitter_factor``. The older keys
    ``center_jitter_factor`` / ``scale_jitter_factor`` are still read and set both frames alike.
    """

    preset: SamplingPresetName = Field(
        "custom", description="fill unset fields from a named preset (dimp50: 5/288/18; superdimp: 6/352/22)"
    )
    search_area_factor: float = Field(5.0, gt=1.0, description="crop side / sqrt(box area)")
    output_sz: int = Field(128, ge=32, description="crop side in pixels")
    feature_stride: int = Field(16, ge=1, description="stride of the classifier feature map")
    filter_size: int = Field(4, ge=1)
    crop_mode: Literal["replicate", "inside", "inside_major"] = Field(
        "replicate",
        description="'replicate': crop centred on the jittered box, border pixels replicated outside the image; "
        "'inside': crop shifted (and shrunk, down to 1/max_scale_change) to lie inside the image; 'inside_major': "
        "the same for the image's longer side only, so the crop fits one axis (SuperDiMP)",
    )
    max_scale_change: float | None = Field(
        None, ge=1.0, description="'inside'/'inside_major': most a crop may shrink to fit (None: no limit)"
    )
    reference_center_jitter_factor: float = Field(3.0, ge=0.0, description="reference (train) frame centre jitter")
    test_center_jitter_factor: float = Field(3.0, ge=0.0, description="test frame centre jitter (DiMP-50: 4.5)")
    reference_scale_jitter_factor: float = Field(0.25, ge=0.0, description="reference frame log-scale jitter std")
    test_scale_jitter_factor: float = Field(0.25, ge=0.0, description="test frame log-scale jitter std (DiMP: 0.5)")
    label_sigma_factor: float = Field(0.25, gt=0.0, description="sigma / target size, in feature cells")
    num_proposals: int = Field(8, ge=8, le=128, description="boxes per test frame (DiMP-50: 8, SuperDiMP: 128)")
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

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, (reference, test) in _LEGACY_JITTER_KEYS.items():
            if old not in data:
                continue
            both = [key for key in (reference, test) if key in data]
            if both:
                raise ValueError(
                    f"{old} (both frames) cannot be combined with {' and '.join(both)}: "
                    f"set {reference} and {test} instead"
                )
            value = data.pop(old)
            data[reference] = data[test] = value
        preset = data.get("preset", "custom")
        if preset in SAMPLING_PRESETS:
            for key, value in SAMPLING_PRESETS[preset].items():
                data.setdefault(key, copy.deepcopy(value))
        return data  # an unknown preset name is reported by the field's own validation

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

    def jitter(self, frame: Literal["reference", "test"]) -> tuple[float, float]:
        """``(center_jitter_factor, scale_jitter_factor)`` of the ``reference`` or ``test`` frame."""
        if frame == "reference":
            return self.reference_center_jitter_factor, self.reference_scale_jitter_factor
        if frame == "test":
            return self.test_center_jitter_factor, self.test_scale_jitter_factor
        raise ValueError(f"frame must be 'reference' or 'test', got {frame!r}")


class DataConfig(_Strict):
    """Where the unlabeled pairs live and how training samples are cut from them."""

    uri: str = Field("data/demo/pairs", description="local path, file:// or s3://bucket/prefix of the pair set")
    layout: Literal["two_folder", "kaist", "llvip", "manifest", "concatenated"] = Field(
        "two_folder",
        description="two_folder: <uri>/<rgb_dir>/… with <uri>/<tir_dir>/…; kaist: …/setXX/VXXX/{visible,lwir}/; "
        "llvip: <uri>/{visible,infrared}/{train,test}/; manifest: CSV/Parquet file data.manifest; "
        "concatenated: every image under <uri> is one [RGB | TIR] side-by-side pair",
    )
    rgb_dir: str = Field("rgb", description="two_folder: subfolder of the RGB images")
    tir_dir: str = Field("tir", description="two_folder: subfolder of the TIR images")
    match: Literal["stem", "regex"] = Field(
        "stem",
        description="two_folder: pair files by their path without extension (stem) or by the (?P<key>…) group of "
        "match_pattern searched in the file name (regex)",
    )
    match_pattern: str | None = Field(None, description="two_folder, match=regex: e.g. '(?P<key>FLIR_\\d+)_'")
    kaist_sets: list[str] = Field(default_factory=list, description="kaist: only these sets (set00 …); empty: all")
    llvip_split: Literal["train", "test", "both"] = Field("train", description="llvip: which split's pairs")
    manifest: str | None = Field(
        None, description="manifest: URI of a CSV/Parquet file, columns rgb, tir[, boxes] (cmd-ray boxes writes one)"
    )
    boxes: BoxMethodName = Field(
        "center",
        description="pseudo targets: centre square, random regions (§4.2), detector boxes, or hotspot (a centre-sized "
        "square around the warmest region of the TIR image)",
    )
    center_box_fraction: float = Field(0.3, gt=0.0, le=1.0, description="box side / min(H, W)")
    random_boxes_per_pair: int = Field(
        4, ge=1, description="random: k regions per pair (fixed per pair and seed); each sample draws one"
    )
    random_box_fraction: float = Field(
        1 / 6, gt=0.0, le=1.0, description="random: region width / image width (and height / height)"
    )
    random_box_scale_range: tuple[float, float] = Field(
        (0.8, 1.25), description="random: region size × U(low, high) ('approximately 1/6')"
    )
    random_box_patch: int = Field(
        100, ge=0, description="random: the pair is resampled so the region becomes patch × patch pixels (0: not)"
    )
    detector: Literal["hog", "torchvision"] = Field(
        "hog", description="detection: OpenCV's HOG people detector, or a torchvision model from detector_weights"
    )
    detector_weights: str | None = Field(None, description="torchvision: state-dict file (local or s3://)")
    detector_arch: str = Field(
        "fasterrcnn_mobilenet_v3_large_320_fpn", description="torchvision: builder name in torchvision.models"
    )
    detector_num_classes: int = Field(91, ge=2, description="torchvision: classes of the weights (COCO: 91)")
    detector_labels: list[int] = Field(
        default_factory=lambda: [1], description="torchvision: class ids kept (COCO person: 1); empty: every class"
    )
    detector_score_threshold: float = Field(
        0.5, description="detection: minimum score (torchvision: class probability; hog: SVM margin)"
    )
    detector_upscale: float = Field(
        1.0, ge=1.0, le=8.0, description="hog: enlarge the image first (its 64x128 window misses smaller people)"
    )
    detect_on_tir: bool = Field(False, description="detection: also detect on TIR and merge with NMS")
    nms_iou: float = Field(0.8, gt=0.0, le=1.0, description="detection: NMS IoU threshold when merging")
    max_boxes: int = Field(5, ge=1, description="detection: at most this many boxes per pair")
    min_box_size: float = Field(8.0, ge=1.0, description="detection: boxes narrower or lower (pixels) are dropped")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of pairs held out for validation")
    max_skipped_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="a run whose unreadable (skipped) pairs exceed this share of the listed pairs (pretraining: of "
        "the frames of pretrain.sequences_uri) fails and registers nothing. 1%: a few corrupt files in a real set "
        "(KAIST ~95k pairs, LLVIP ~15k) stay far below it, while a systematic fault (a broken copy, the wrong "
        "folder, a format the decoder cannot read) lies far above; every skipped pair is silently replaced by "
        "another, so beyond a few per hundred an epoch no longer sees the data set it names. 1.0: never fail",
    )
    num_actors: int = Field(1, ge=1, description="Ray Data actors that decode and crop")
    cpus_per_actor: float = Field(0.5, gt=0.0)
    object_store_memory_mb: int | None = Field(
        None, ge=64, description="Ray Data: object-store budget of the sample stream (None: Ray Data's default)"
    )
    preserve_order: bool = Field(
        False,
        description="Ray Data: deliver samples in index order whichever actor finishes first, so batches are the "
        "same on every run of a seed (an actor that falls behind then stalls the stream)",
    )
    progress: bool | None = Field(
        None,
        description="progress bars: tqdm while writing, listing and tracking, Ray Data's while streaming (null: "
        "on when stderr is a terminal; off in a log file, a CI job or a submitted Ray job, whose logs keep one line "
        "per epoch instead)",
    )
    label_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Ray node labels every Ray Data task and actor of the sample streams must match, e.g. "
        "{cmd-ray.role: data} keeps decoding and cropping on the CPU data nodes (empty: any node)",
    )

    @property
    def show_progress(self) -> bool:
        """Whether to draw progress bars here: ``progress``, or when it is null, whether stderr (where the bars go)
        is a terminal. Read on the driver: a Ray worker's stderr never is."""
        return self.progress if self.progress is not None else sys.stderr.isatty()

    @field_validator("label_selector")
    @classmethod
    def _data_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_label_selector(value, "data.label_selector")

    @model_validator(mode="after")
    def _layout_options(self) -> DataConfig:
        import re

        if self.layout == "manifest" and not self.manifest:
            raise ValueError("data.layout=manifest needs data.manifest (URI of a CSV or Parquet manifest)")
        if self.manifest and self.layout != "manifest":
            raise ValueError(f"data.manifest is read only with data.layout=manifest (layout is {self.layout!r})")
        if self.match == "regex":
            if not self.match_pattern:
                raise ValueError("data.match=regex needs data.match_pattern, a regex with a (?P<key>…) group")
            try:
                pattern = re.compile(self.match_pattern)
            except re.error as exc:
                raise ValueError(f"data.match_pattern {self.match_pattern!r} is not a valid regex: {exc}") from None
            if "key" not in pattern.groupindex:
                raise ValueError(f"data.match_pattern {self.match_pattern!r} needs a (?P<key>…) group")
        elif self.match_pattern:
            raise ValueError("data.match_pattern is used only with data.match=regex")
        for name in self.kaist_sets:
            if not re.fullmatch(r"set\d+", name):
                raise ValueError(f"data.kaist_sets: set names look like 'set00', got {name!r}")
        low, high = self.random_box_scale_range
        if not 0 < low <= high:
            raise ValueError(f"data.random_box_scale_range must satisfy 0 < low <= high, got [{low}, {high}]")
        if self.boxes == "detection" and self.detector == "hog":
            import cv2

            if not hasattr(cv2, "HOGDescriptor"):
                raise ValueError(
                    f"data.detector=hog needs cv2.HOGDescriptor, which OpenCV {cv2.__version__} lacks (OpenCV 5 "
                    "removed it): install opencv-python-headless<5, or set data.detector=torchvision with "
                    "data.detector_weights"
                )
        if self.random_box_patch and self.random_box_patch / (self.random_box_fraction * low) > 8192:
            raise ValueError(
                f"data.random_box_patch={self.random_box_patch} over regions of {self.random_box_fraction:.3g} x "
                f"{low:g} of the image would resample images beyond 8192 pixels; raise random_box_fraction"
            )
        if self.detector == "torchvision":
            if not self.detector_weights:
                raise ValueError(
                    "data.detector=torchvision needs data.detector_weights (a local or s3:// state-dict file; "
                    "nothing is downloaded)"
                )
            from torchvision.models import detection, list_models

            known = list_models(module=detection)
            if self.detector_arch not in known:
                raise ValueError(f"data.detector_arch {self.detector_arch!r} is not one of {', '.join(known)}")
        return self


class ModelConfig(_Strict):
    """The network: ``architecture`` (DiMP or ATOM) and a ``preset`` of its layer sizes and classifier settings.

    Presets (:mod:`cmd_ray.models.dimpnet`): ``dimp`` allows ``tiny``, ``dimp18``, ``dimp50``,
    ``superdimp``; ``atom`` allows ``tiny``, ``atom18``, ``atom50``. The backbone follows from the
    preset (:attr:`backbone`).
    """

    architecture: ArchitectureName = "dimp"
    preset: PresetName = Field("tiny", description="layer sizes and classifier settings; implies the backbone")
    init_checkpoint: str | None = Field(None, description="teacher weights (URI of a cmd-ray or pytracking file)")
    trainable_backbone_layers: list[BackboneStage] = Field(
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


class DStartConfig(_Strict):
    """Where a D row (D1-D5) starts: B3's IoU-Net with C1's classifier (§4.3), merged on the driver when the run
    starts (:func:`cmd_ray.train.teacher.resolve_start`, the merge of ``cmd-ray merge``). Each key takes
    ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``), a cmd-ray checkpoint folder or ``training_state.pt``, a
    state-dict or pytracking file, local or ``s3://``. B3 is ``b3``, or ``b1`` and ``b2`` (B3 = B1 with B2's IoU-Net
    test branch, merged with the rest). Unset (default): the D row starts from the teacher (``model.init_checkpoint``)
    and is named as such, e.g. "D3 loss from the teacher" (:func:`cmd_ray.vocabulary.run_label`). Only the D rows
    take these keys; ``jobs/table1.py`` sets them for its D rows itself.
    """

    b3: str | None = Field(None, min_length=1, description="B3's weights (or give b1 and b2 instead)")
    b1: str | None = Field(None, min_length=1, description="B1's weights: with b2, B3 = B1 + B2's IoU-Net test branch")
    b2: str | None = Field(None, min_length=1, description="B2's weights, whose IoU-Net test branch goes into B3")
    c1: str | None = Field(None, min_length=1, description="C1's weights, whose classifier the D row starts with")

    @model_validator(mode="after")
    def _a_whole_start(self) -> DStartConfig:
        """Either nothing (the teacher) or a whole D start: B3 (b3, or b1 and b2) and C1."""
        if self.b3 and (self.b1 or self.b2):
            both = " and ".join(f"distill.start.{k}" for k in ("b1", "b2") if getattr(self, k))
            raise ValueError(f"distill.start.b3 and {both} both name B3: give b3, or b1 and b2 (merged into B3)")
        if bool(self.b1) != bool(self.b2):
            given, missing = ("b1", "b2") if self.b1 else ("b2", "b1")
            raise ValueError(f"distill.start.{given} needs distill.start.{missing}: B3 is B1 with B2's test branch")
        has_b3 = bool(self.b3 or self.b1)
        if has_b3 != bool(self.c1):
            given = "distill.start.c1" if self.c1 else ("distill.start.b3" if self.b3 else "distill.start.b1/b2")
            missing = "distill.start.b3 (or b1 and b2)" if self.c1 else "distill.start.c1"
            raise ValueError(
                f"{given} needs {missing}: a D row starts from B3's IoU-Net with C1's classifier; "
                "unset every distill.start key to start from the teacher"
            )
        return self

    @property
    def given(self) -> bool:
        """True when the keys name a D start (the validator makes it all or nothing)."""
        return bool(self.c1)

    def named(self) -> dict[str, str]:
        """``{"distill.start.<key>": URI}`` of the keys set, in the order b3, b1, b2, c1."""
        return {f"distill.start.{key}": getattr(self, key) for key in ("b3", "b1", "b2", "c1") if getattr(self, key)}


SelectBy = Literal["last", "val_success", "val_precision"]
"""``distill.select_by``: keep the final epoch, or the epoch (teacher included) tracking the validation split best."""


class DistillConfig(_Strict):
    """The CMD schedule: L = L_TCL + lambda * L_BBE with per-module learning rates.

    Rates: each Table 1 row has the paper's rates (``cmd-ray variants``: 1e-6 for the one module of B1, B2, C1;
    lr_tcl 2e-8 and lr_bbe 1e-7 for the D rows). An unset ``lr_tcl`` / ``lr_bbe`` is the row's paper rate times
    ``lr_scale``; a rate set explicitly (YAML, override, a sweep's sample) is used as given, not scaled, so an
    explicit rate means exactly what it says.
    """

    variant: VariantName = "D3"
    mixing: MixingName = Field(
        "batch_split",
        description="how the mix rows (D3-D5) put both modalities on both branches. 'batch_split' (default, what "
        "the paper's text describes, §4): the first ceil(B/2) samples of a mini-batch feed RGB to the reference "
        "and TIR to the test branch, the rest TIR to the reference and RGB to the test branch. 'side_by_side' (the "
        "authors' released code): every sample's RGB and TIR images are put side by side, [RGB|TIR] cut for the "
        "reference and [TIR|RGB] for the test branch, the pseudo box in the left half; mix rows only",
    )
    lr_tcl: float | None = Field(
        None,
        ge=0.0,
        description="Adam learning rate of the target classifier (TCL modules); unset: the row's paper rate "
        "(cmd-ray variants) x lr_scale, 0 for a row that does not train it; set: used as given, not scaled",
    )
    lr_bbe: float | None = Field(
        None,
        ge=0.0,
        description="Adam learning rate of the IoU-Net (BBE modules); unset: the row's paper rate x lr_scale, 0 for "
        "a row that does not train it; set: used as given, not scaled",
    )
    lr_scale: float = Field(
        1.0,
        gt=0.0,
        description="factor on the row's paper rates (lr_tcl, lr_bbe left unset): a short training at "
        "lr_scale=100 keeps the paper's ratios between rows and modules; explicit lr_tcl / lr_bbe are not scaled",
    )
    lr_backbone: float = Field(1e-7, gt=0.0, description="for model.trainable_backbone_layers, if any")
    loss_weight_bbe: float = Field(1.0, ge=0.0, description="lambda of Eq. 1 (SuperDiMP's KL box weight: 0.01)")
    tcl_loss: TclLossForm = Field(
        "lbhinge",
        description="data term of L_TCL: 'lbhinge' (DiMP: squared error, hinged on the background) or 'squared' "
        "(Eq. 2 as written: plain squared error against the Gaussian label)",
    )
    tcl_weights: TclWeights = Field(default_factory=TclWeights)
    hinge_threshold: float = Field(0.05, description="'lbhinge': label value below which a cell is background")
    filter_reg_mu: float = Field(0.0, ge=0.0, description="mu of Eq. 2: adds mu * |final filter|^2 to L_TCL")
    bbe_loss: BbeLossForm = Field(
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
    start: DStartConfig = Field(default_factory=DStartConfig)

    @model_validator(mode="after")
    def _start_of_a_d_row(self) -> DistillConfig:
        """Only the D rows start from merge(B3, C1); naming its sources for another row is a mistake."""
        row = get_variant(self.variant)
        named = self.start.named()
        if named and not row.init_from:
            d_rows = ", ".join(name for name, v in vocabulary.VARIANTS.items() if v.init_from)
            raise ValueError(
                f"{', '.join(named)} set, but distill.variant={row.name} is not a D row: only {d_rows} start from "
                f"merge(B3, C1); {row.name} starts from the teacher (model.init_checkpoint). Unset distill.start.*"
            )
        return self

    select_by: SelectBy = Field(
        "last",
        description="which weights the distill job registers: 'last' (the final epoch), or the epoch, the teacher "
        "included as epoch -1, that tracks the labeled TIR validation sequences of tune.eval_root best by OPE "
        "Success ('val_success') or Precision ('val_precision'). An epoch must beat every earlier one, the teacher "
        "included (ties keep the earlier); when no epoch beats the teacher, its weights are registered. "
        "Table 1 rows keep their final epoch",
    )
    select_every: int = Field(
        1, ge=1, description="with select_by: track the validation sequences every N-th epoch (the last one always)"
    )

    @model_validator(mode="after")
    def _mixing_of_a_mix_row(self) -> DistillConfig:
        """``side_by_side`` mixes the two modalities: only the mix rows (D3–D5) feed both to both branches."""
        row = get_variant(self.variant)
        if self.mixing == "side_by_side" and not row.is_mix:
            mix_rows = ", ".join(name for name, v in vocabulary.VARIANTS.items() if v.is_mix)
            raise ValueError(
                f"distill.mixing='side_by_side' is for the mix rows ({mix_rows}), but row {row.name} feeds "
                f"{row.reference_modality.upper()} to the reference and {row.test_modality.upper()} to the test "
                "branch; use distill.mixing=batch_split (the default) with it"
            )
        return self

    @model_validator(mode="after")
    def _row_rates(self) -> DistillConfig:
        """Unset rates take the row's paper rates times ``lr_scale``; a branch the row trains needs a rate above 0."""
        paper = self.paper_rates()
        row = get_variant(self.variant)
        for key, trained in (("lr_tcl", row.train_tcl), ("lr_bbe", row.train_bbe)):
            if getattr(self, key) is None:
                setattr(self, key, paper[key])
                # filled in, not set: explicit_rates() and jobs/table1.py tell the two apart
                self.__pydantic_fields_set__.discard(key)
            elif trained is not None and getattr(self, key) == 0:
                raise ValueError(
                    f"distill.{key}=0 but row {row.name} trains that module; unset it for the paper's rate"
                )
        return self

    def paper_rates(self) -> dict[str, float]:
        """``{"lr_tcl": …, "lr_bbe": …}``: the row's paper rates times ``lr_scale`` (0 for a module it does not
        train), what an unset rate resolves to."""
        row = get_variant(self.variant)
        # 12 significant digits drop the binary product's tail (1e-6 x 100 = 9.999999999999999e-05): the rate is the
        # decimal a person computes, prints as such, and equals the same rate set explicitly
        return {key: float(f"{getattr(row, key) * self.lr_scale:.12g}") for key in ("lr_tcl", "lr_bbe")}

    def explicit_rates(self) -> dict[str, float]:
        """The rates this config sets itself (YAML or overrides), not filled in from the row's paper rates."""
        return {key: getattr(self, key) for key in ("lr_tcl", "lr_bbe") if key in self.model_fields_set}

    def rate_overrides(self) -> dict[str, tuple[float, float]]:
        """``{"lr_tcl": (rate, paper rate × lr_scale), …}`` for each rate of a module the row trains that differs
        from the row's paper rate times ``lr_scale`` (set explicitly in the config or by a sweep)."""
        row = get_variant(self.variant)
        paper = self.paper_rates()
        return {
            key: (getattr(self, key), paper[key])
            for key, trained in (("lr_tcl", row.train_tcl), ("lr_bbe", row.train_bbe))
            if trained is not None and getattr(self, key) != paper[key]
        }

    @property
    def start_kind(self) -> str:
        """Where the run's weights start: :data:`~cmd_ray.vocabulary.START_D` when ``start`` names B3 and C1, else
        :data:`~cmd_ray.vocabulary.START_TEACHER`."""
        return vocabulary.START_D if self.start.given else vocabulary.START_TEACHER

    @property
    def run_label(self) -> str:
        """What this run is called in tables, MLflow tags and registry descriptions
        (:func:`cmd_ray.vocabulary.run_label`): ``"D3"``, or ``"D3 loss from the teacher"``."""
        return vocabulary.run_label(self.variant, self.start_kind)


class ScalingSettings(_Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads per training worker (null: Ray's default, the worker's whole CPUs). "
        "More than cpus_per_worker lets a worker use cores that Ray has reserved for lightly loaded data actors",
    )
    amp: bool = Field(False, description="bf16/fp16 autocast on GPU workers; ignored on CPU")
    label_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Ray node labels every training worker's node must carry, e.g. {cmd-ray.role: train} "
        "(empty: any node)",
    )
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each training worker reserves besides CPU (and GPU with use_gpu), "
        "e.g. {train_slot: 1}: one worker per node that advertises one train_slot",
    )

    @field_validator("label_selector")
    @classmethod
    def _train_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_label_selector(value, "scaling.label_selector")

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_resources_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in {"CPU", "GPU", "memory", "object_store_memory"}:
                raise ValueError(
                    f"scaling.resources_per_worker: {name!r} is set by cpus_per_worker / use_gpu, not here"
                )
            if amount <= 0:
                raise ValueError(f"scaling.resources_per_worker.{name} must be > 0 (got {amount})")
        return value


class StorageConfig(_Strict):
    storage_path: str = Field("ray_results", description="checkpoints: local path or s3://bucket/prefix")
    run_name: str = Field("cmd-distill", min_length=1)
    s3_endpoint_url: str | None = Field(None, description="overrides AWS_ENDPOINT_URL for s3:// URIs")
    checkpoints_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    read_timeout_s: float = Field(
        300.0,
        ge=0.0,
        description="seconds one image read of the data actors (sample streams, cmd-ray boxes) keeps retrying "
        "transient S3 errors (SlowDown, 5xx, timeouts, resets) with exponential backoff and full jitter before its "
        "batch fails; no other pair is ever drawn in its place. Minutes, so that samples wait out a throttled or "
        "briefly unreachable store. Other storage operations follow the same policy with the defaults",
    )
    retry_max_delay_s: float = Field(
        20.0, ge=0.1, description="longest backoff between two attempts of one read (the first is at most 0.1 s)"
    )


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(None, description="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str = Field("cmd-ray", min_length=1)
    registered_model_name: str = Field("cmd-ray-tracker", min_length=1)
    alias: str = Field("candidate", pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")


TuneMetric = Literal["val_loss", "loss", "loss_tcl", "loss_bbe", "val_success", "val_precision"]
TRACKING_METRICS: tuple[str, ...] = ("val_success", "val_precision")
"""Sweep metrics measured by tracking ``tune.eval_root`` (higher is better); the others are losses (lower is better)."""


def metric_mode(metric: str) -> Literal["min", "max"]:
    """``"max"`` for a tracking metric (:data:`TRACKING_METRICS`), ``"min"`` for a loss."""
    return "max" if metric in TRACKING_METRICS else "min"


class TuneSettings(_Strict):
    """Ray Tune sweep over lr_bbe, lr_tcl and lambda (log-uniform ranges).

    ``metric`` is what ASHA and the best pick compare: a loss (lowest wins) or ``val_success`` / ``val_precision``
    (highest wins): the OPE Success / Precision of the online tracker on the labeled TIR sequences of ``eval_root``
    (``eval_benchmark``'s layout, ``evaluation.protocol``), tracked by each trial at the epochs ASHA compares.
    """

    num_samples: int = Field(3, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    lr_tcl: tuple[float, float] = (1e-8, 1e-6)
    lr_bbe: tuple[float, float] = (1e-8, 1e-6)
    loss_weight_bbe: tuple[float, float] = (0.1, 10.0)
    seed: int | None = Field(
        0,
        description="seeds the searcher's draws of lr_tcl, lr_bbe and loss_weight_bbe: the same seed samples the same "
        "trials on every new sweep (each trial trains at distill.seed); null: fresh draws every sweep",
    )
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: int = Field(2, ge=2)
    metric: TuneMetric = Field(
        "val_loss",
        description="what ASHA and the best pick compare: a loss (min) or val_success / val_precision (max), the "
        "tracker's OPE scores on eval_root",
    )
    trial_cpus: float = Field(0.1, gt=0.0, description="CPU share of the trial function itself")
    eval_root: str | None = Field(
        None,
        description="labeled TIR validation sequences each trial tracks (local folder or s3:// prefix); needed by "
        "metric val_success / val_precision and by distill.select_by. Keep it apart from evaluation.root: tuning on "
        "the test set biases it (distill.select_by refuses evaluation.root)",
    )
    eval_benchmark: BenchmarkName | None = Field(None, description="eval_root's layout (default: evaluation.benchmark)")
    eval_sequences: list[str] | None = Field(None, description="track only these sequences of eval_root (default: all)")
    eval_tasks: int | None = Field(
        None,
        ge=1,
        description="most sequence tasks a trial runs at once while its rank-0 worker waits (default: "
        "scaling.cpus_per_worker rounded down, at least 1)",
    )

    @model_validator(mode="after")
    def _ranges(self) -> TuneSettings:
        for name in ("lr_tcl", "lr_bbe", "loss_weight_bbe"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} range must satisfy 0 < low <= high, got [{low}, {high}]")
        return self

    @model_validator(mode="after")
    def _tracking_set(self) -> TuneSettings:
        if self.metric in TRACKING_METRICS and not (self.eval_root and self.eval_root.strip()):
            raise ValueError(
                f"tune.metric={self.metric} tracks labeled TIR sequences: set tune.eval_root (a local folder or "
                "s3:// prefix of validation sequences, e.g. the tir_sequences folder of cmd-ray synth)"
            )
        if self.eval_root is not None:
            if self.eval_root.startswith("s3://"):
                if not self.eval_root[len("s3://") :].strip("/"):
                    raise ValueError(f"tune.eval_root {self.eval_root!r} names no bucket: use s3://bucket/prefix")
            elif "://" in self.eval_root and not self.eval_root.startswith("file://"):
                raise ValueError(f"tune.eval_root must be a local folder, file:// or s3:// URI, got {self.eval_root!r}")
        if self.eval_sequences is not None:
            if not self.eval_sequences:
                raise ValueError("tune.eval_sequences, when given, must name at least one sequence")
            repeated = sorted({s for s in self.eval_sequences if self.eval_sequences.count(s) > 1})
            if repeated:
                raise ValueError(f"tune.eval_sequences are repeated: {repeated}")
        return self


class PretrainConfig(_Strict):
    """Supervised RGB teacher training on labeled sequences (``jobs/pretrain.py``).

    Ordinary DiMP/ATOM training: a reference and a test frame of one sequence, at most ``max_gap`` frames
    apart, cropped around their true boxes. The model becomes the teacher of a distillation run
    (``model.init_checkpoint: models:/<registered_model_name>@<mlflow.alias>``). Data sampling, the model and
    the loss forms are shared with distillation (``data.sampling``, ``model``, ``distill.tcl_loss`` …).
    """

    sequences_uri: str = Field(
        "data/demo/rgb_sequences",
        description="labeled RGB sequences: <uri>/<seq>/img/*.jpg with <uri>/<seq>/groundtruth_rect.txt (x,y,w,h)",
    )
    max_gap: int = Field(200, ge=0, description="largest frame distance between the reference and the test frame")
    init_checkpoint: str | None = Field(
        None, description="starting weights (e.g. ImageNet backbone; any model.init_checkpoint form); unset: random"
    )
    epochs: int = Field(50, ge=1)
    samples_per_epoch: int = Field(26000, ge=1)
    batch_size: int = Field(10, ge=1, description="frame pairs per worker per step")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of sequences held out for validation")
    val_samples: int = Field(64, ge=0, description="fixed validation samples scored every epoch (0: none)")
    lr_tcl: float = Field(5e-5, gt=0.0, description="target classifier (features, initializer, optimizer)")
    lr_bbe: float = Field(1e-3, gt=0.0, description="IoU-Net")
    lr_backbone: float = Field(2e-5, gt=0.0)
    trainable_backbone_layers: list[BackboneStage] = Field(
        default_factory=lambda: ["layer2", "layer3"],
        description="backbone stages trained with lr_backbone (a tiny network from scratch: all of them)",
    )
    loss_weight_bbe: float = Field(1.0, ge=0.0)
    lr_step: int = Field(15, ge=1)
    lr_gamma: float = Field(0.2, gt=0.0, le=1.0)
    grayscale_probability: float = Field(
        0.05, ge=0.0, le=1.0, description="samples whose two crops are made grey (DiMP training: 0.05)"
    )
    brightness_jitter: float = Field(
        0.2, ge=0.0, lt=1.0, description="each training crop's brightness scaled by U[1 - j, 1 + j] (DiMP: 0.2)"
    )
    seed: int = 0
    run_name: str = Field("cmd-pretrain", min_length=1, description="Ray Train run (checkpoints) and MLflow run name")
    registered_model_name: str = Field("cmd-ray-teacher", min_length=1)


class TrackerConfig(_Strict):
    """Online DiMP tracker parameters (:mod:`cmd_ray.tracking`), named as pytracking's DiMP parameters.

    Defaults are DiMP-50's (``pytracking/parameter/dimp/dimp50.py``). ``preset`` fills every field the
    config does not set: ``dimp50`` (the defaults), ``superdimp`` (crop 352 px for search area 6, crops kept
    inside the image, box refinement in the relative parametrisation), ``tiny`` (crop 128 px: the
    ``model.preset=tiny`` networks trained on 128-px crops at search area 5, feature stride 16; the score peak
    refined between cells, whose 16 px are a third of the target there).
    Lengths are pixels: ``image_sample_size`` of the crop fed to the network, the rest of the image.
    """

    class Augmentation(_Strict):
        """First-frame training samples besides the plain crop (pytracking's ``params.augmentation``).

        Shifts and blur sigmas are ``(x, y)`` pairs in crop pixels; ``relativeshift`` in half crop sides.
        """

        shift: list[tuple[float, float]] = Field(default_factory=list, description="(dx, dy) crop px")
        relativeshift: list[tuple[float, float]] = Field(
            default_factory=lambda: [(0.6, 0.6), (-0.6, 0.6), (0.6, -0.6), (-0.6, -0.6)],
            description="(dx, dy) as fractions of half the crop side",
        )
        fliplr: bool = True
        blur: list[tuple[float, float]] = Field(
            default_factory=lambda: [(3.0, 1.0), (1.0, 3.0), (2.0, 2.0)], description="Gaussian (sigma_x, sigma_y)"
        )
        scale: list[float] = Field(default_factory=list, description="zoom-out factors (> 1 shrinks the target)")
        rotate: list[float] = Field(default_factory=lambda: [10.0, -10.0, 45.0, -45.0], description="degrees")
        dropout: tuple[int, float] | None = Field(
            (2, 0.2), description="(copies, channel drop probability) of the plain sample's classifier features"
        )

        @model_validator(mode="after")
        def _ranges(self) -> TrackerConfig.Augmentation:
            if any(v <= 0 for pair in self.blur for v in pair):
                raise ValueError(f"augmentation.blur sigmas must be > 0, got {self.blur}")
            if any(v <= 0 for v in self.scale):
                raise ValueError(f"augmentation.scale factors must be > 0, got {self.scale}")
            if any(abs(v) > 1 for pair in self.relativeshift for v in pair):
                raise ValueError(f"augmentation.relativeshift values must lie in [-1, 1], got {self.relativeshift}")
            if self.dropout is not None and (self.dropout[0] < 0 or not 0 <= self.dropout[1] < 1):
                raise ValueError(
                    f"augmentation.dropout must be (copies >= 0, 0 <= probability < 1), got {self.dropout}"
                )
            return self

        def num_samples(self) -> int:
            """Initial training samples these augmentations make, the plain crop included."""
            return (
                1
                + len(self.shift)
                + len(self.relativeshift)
                + int(self.fliplr)
                + len(self.blur)
                + len(self.scale)
                + len(self.rotate)
                + (self.dropout[0] if self.dropout else 0)
            )

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "dimp50": {},
        "superdimp": {
            "image_sample_size": 352,
            "search_area_scale": 6.0,
            "border_mode": "inside_major",
            "patch_max_scale_change": 1.5,
            "box_refinement_space": "relative",
            "box_refinement_iter": 10,
            "box_refinement_step_length": 2.5e-3,
        },
        "tiny": {"image_sample_size": 128, "subcell_peak": True},
    }
    """Values a preset gives the fields a config leaves unset (``dimp50``: the field defaults)."""

    preset: TrackerPresetName = Field(
        "dimp50", description="fills the fields not set explicitly (see TrackerConfig.PRESETS)"
    )
    # search region
    image_sample_size: int = Field(288, ge=32, description="side of the network's crop, px (DiMP-50: 18*16)")
    search_area_scale: float = Field(5.0, gt=1.0, description="crop side / sqrt(target area), in image px")
    border_mode: Literal["replicate", "inside", "inside_major"] = Field(
        "replicate",
        description="'replicate': pad beyond the image; 'inside'/'inside_major': shrink the crop by up to "
        "patch_max_scale_change until it fits the image (both / the smaller dimension) and shift it inside",
    )
    patch_max_scale_change: float | None = Field(None, ge=1.0, description="cap of the 'inside' shrink factor")
    # sample memory and filter updates
    update_classifier: bool = True
    sample_memory_size: int = Field(50, ge=2)
    learning_rate: float = Field(0.01, gt=0.0, lt=1.0, description="weight growth of each new sample")
    init_samples_minimum_weight: float = Field(0.25, ge=0.0, lt=1.0, description="0 turns the floor off")
    train_skipping: int = Field(20, ge=1, description="frames between regular filter updates")
    net_opt_iter: int = Field(10, ge=0, description="filter optimizer steps on the first frame")
    net_opt_update_iter: int = Field(2, ge=0, description="steps of a regular update")
    net_opt_hn_iter: int = Field(1, ge=0, description="steps after a hard negative")
    hard_negative_learning_rate: float = Field(0.02, gt=0.0, lt=1.0)
    # first-frame augmentation
    use_augmentation: bool = True
    augmentation: Augmentation = Field(default_factory=Augmentation)
    random_shift_factor: float = Field(
        1.0 / 3.0, ge=0.0, lt=1.0, description="random shift of flip/blur/scale/rotate samples, x crop side"
    )
    # localisation
    advanced_localization: bool = True
    subcell_peak: bool = Field(
        False, description="refine the score peak between cells (a parabola per axis); for coarse score maps"
    )
    target_not_found_threshold: float = Field(0.25, description="peak score below which the target is lost")
    distractor_threshold: float = Field(0.8, gt=0.0, description="second peak / first above this: a distractor")
    hard_negative_threshold: float = Field(0.5, gt=0.0, description="second peak / first above this: hard negative")
    target_neighborhood_scale: float = Field(2.2, gt=0.0, description="masked region around the peak, x target")
    displacement_scale: float = Field(0.8, gt=0.0, description="far from the centre: > this x half the map")
    update_scale_when_uncertain: bool = True
    target_inside_ratio: float = Field(0.2, ge=0.0, le=0.5, description="share of the target kept in the image")
    # IoU-Net box refinement
    use_iou_net: bool = True
    iounet_k: int = Field(3, ge=1, description="the box is the mean of the top-k refined boxes")
    num_init_random_boxes: int = Field(9, ge=0, description="jittered boxes besides the classifier's")
    box_jitter_pos: float = Field(0.1, ge=0.0, description="centre jitter range, x sqrt(box area)")
    box_jitter_sz: float = Field(0.5, ge=0.0, description="size jitter range, x sqrt(box area)")
    maximal_aspect_ratio: float = Field(6.0, gt=1.0)
    box_refinement_iter: int = Field(5, ge=0, description="gradient-ascent steps on the predicted IoU")
    box_refinement_step_length: float | tuple[float, float] = Field(
        1.0, description="step (or (centre, size) steps); 'default' space: x box size"
    )
    box_refinement_step_decay: float = Field(1.0, gt=0.0, le=1.0)
    box_refinement_space: Literal["default", "relative"] = Field(
        "default", description="'default': x, y, w, h scaled by the size; 'relative': cx/w0, cy/h0, log w, log h"
    )
    seed: int = Field(0, description="random shifts, feature dropout and jittered boxes (reset by initialize)")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "dimp50")
        if preset not in cls.PRESETS:
            return data  # the Literal check names the allowed presets
        return {**cls.PRESETS[preset], **data}

    @model_validator(mode="after")
    def _consistent(self) -> TrackerConfig:
        steps = self.box_refinement_step_length
        if any(s < 0 for s in (steps if isinstance(steps, tuple) else (steps,))):
            raise ValueError(f"box_refinement_step_length must be >= 0, got {steps}")
        if self.update_classifier and self.num_init_samples() >= self.sample_memory_size:
            raise ValueError(
                f"sample_memory_size ({self.sample_memory_size}) must exceed the {self.num_init_samples()} "
                "first-frame samples (augmentation, use_augmentation) so that the memory can take new frames"
            )
        return self

    def num_init_samples(self) -> int:
        """First-frame training samples: the plain crop plus the augmented ones (when ``use_augmentation``)."""
        return self.augmentation.num_samples() if self.use_augmentation else 1


TRACKER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
"""Tracker names are folder names under ``evaluation.results_dir`` and MLflow metric prefixes."""


class EvaluatedTracker(_Strict):
    """One tracker of an evaluation: ``kind`` ``dimp`` needs ``model``; ``static`` (repeats the first box) has none.

    ``model`` is ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``), or the URI (local or s3://) of a cmd-ray
    checkpoint folder, a ``training_state.pt`` (the network is rebuilt from the config stored with it) or a state-dict
    / pytracking weights file (the network is built from this config's ``model`` section).
    """

    name: str = Field(min_length=1, max_length=64, pattern=TRACKER_NAME_PATTERN)
    kind: Literal["dimp", "static"] = "dimp"
    model: str | None = Field(None, description="models:/NAME@ALIAS or a checkpoint URI; only for kind dimp")

    @model_validator(mode="after")
    def _model_fits_kind(self) -> EvaluatedTracker:
        if self.kind == "dimp" and not (self.model and self.model.strip()):
            raise ValueError(
                f"tracker {self.name!r} of kind dimp needs a model (models:/NAME@ALIAS or a checkpoint URI)"
            )
        if self.kind == "static" and self.model is not None:
            raise ValueError(f"tracker {self.name!r} of kind static uses no model, got model={self.model!r}")
        return self


class EvaluationConfig(_Strict):
    """OPE evaluation on TIR sequences (``jobs/evaluate.py``, :mod:`cmd_ray.evaluation.runner`).

    One Ray task per (tracker, sequence), at most ``num_workers`` in flight; results go to
    ``results_dir/<tracker>/<sequence>.txt`` (local folder or ``s3://`` prefix) and are reused on a rerun.
    """

    benchmark: BenchmarkName = "synthetic"
    root: str = Field(
        "data/demo/tir_sequences",
        min_length=1,
        description="the benchmark: a local folder (shared by the Ray nodes) or an s3:// prefix (synthetic: the "
        "tir_sequences folder; lsotb: the evaluation set; ptb: the folder holding tirsequences/ and tiranno/)",
    )
    rgb_root: str | None = Field(
        None,
        description="the pixel-aligned RGB twins of root's sequences (same layout and names; synthetic: the "
        "tir_sequences_rgb folder): every tracker is tracked on both, and the table shows the modality gap",
    )
    gap_reference: str = Field(
        "teacher",
        description="with rgb_root: the tracker whose RGB-twin minus TIR gap the others are measured against; when "
        "it is one of the trackers, also the reference of the paired table (each tracker's per-sequence differences "
        "to it, with a bootstrap interval)",
    )
    seed_groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="trackers that are seeds of one training: a row name -> its trackers (at least 2). The paired "
        "table then shows each group over its seeds (mean ± std, Δ to gap_reference paired over seeds × sequences) "
        "and, with rgb_root, the share of the gap each group closed over its seeds",
    )
    sequences: list[str] | None = Field(None, description="evaluate only these sequences (default: all)")
    lsotb_subset: Literal["119", "120"] = Field("119", description="119: the paper's set (without cat_D_001)")
    protocol: Literal["lsotb", "pytracking"] = "lsotb"
    results_dir: str = Field(
        "results",
        min_length=1,
        description="result files, tables and plots: a local folder (shared by the Ray nodes) or an s3:// prefix",
    )
    trackers: list[EvaluatedTracker] = Field(
        default_factory=lambda: [EvaluatedTracker(name="static", kind="static")],
        description="trackers to evaluate; the first is the reference of the deltas in the comparison table",
    )
    num_workers: int = Field(2, ge=1, description="most sequence tasks in flight at once")
    cpus_per_task: float = Field(1.0, gt=0.0)
    use_gpu: bool = False
    gpus_per_task: float = Field(1.0, gt=0.0, le=1.0, description="with use_gpu; a fraction lets tasks share a GPU")
    plots: bool = Field(True, description="success / precision plots (PNG) into results_dir/plots")
    overwrite: bool = Field(
        False,
        description="re-track sequences that already have complete results, and replace a tracker folder's results "
        "of another model or benchmark; only files cmd-ray wrote (a folder with meta.json): another tool's result "
        "files are refused either way",
    )

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationConfig:
        if not self.trackers:
            raise ValueError("trackers must name at least one tracker")
        names = [t.name for t in self.trackers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tracker names must be unique, repeated: {duplicates}")
        for reserved, holds in (("plots", "the plots"), ("rgb_twins", "the results on the RGB twins")):
            if reserved in names:
                raise ValueError(f"a tracker cannot be named {reserved!r} (results_dir/{reserved} holds {holds})")
        for key in ("root", "results_dir", "rgb_root"):
            value = getattr(self, key)
            if value is None:
                continue
            if value.startswith("s3://"):
                if not value[len("s3://") :].strip("/"):
                    raise ValueError(f"{key} {value!r} names no bucket: use s3://bucket/prefix")
            elif "://" in value and not value.startswith("file://"):
                raise ValueError(f"{key} must be a local folder, file:// or s3:// URI, got {value!r}")
        grouped = [m for members in self.seed_groups.values() for m in members]
        for group, members in self.seed_groups.items():
            unknown = [m for m in members if m not in names]
            if unknown:
                raise ValueError(f"seed_groups.{group} names trackers that are not evaluated: {unknown}")
            if len(members) < 2:
                raise ValueError(f"seed_groups.{group} must list at least 2 trackers (the seeds of one training)")
            if group in names:
                raise ValueError(f"seed_groups.{group}: a group cannot take the name of a tracker")
        repeated = sorted({m for m in grouped if grouped.count(m) > 1})
        if repeated:
            raise ValueError(f"seed_groups: a tracker can be a seed of one group only, repeated: {repeated}")
        if self.seed_groups and self.gap_reference not in names:
            raise ValueError(f"gap_reference {self.gap_reference!r} (the seed groups' reference) is not a tracker")
        if self.gap_reference in grouped:
            raise ValueError(f"gap_reference {self.gap_reference!r} cannot be a seed of a group")
        if self.rgb_root is not None:
            if self.rgb_root.rstrip("/") == self.root.rstrip("/"):
                raise ValueError(f"rgb_root must hold the RGB twins, not the TIR sequences of root ({self.root!r})")
            if self.gap_reference not in names:
                raise ValueError(f"gap_reference {self.gap_reference!r} is not one of the trackers {names}")
        if self.sequences is not None:
            if not self.sequences:
                raise ValueError("sequences, when given, must name at least one sequence")
            repeated = sorted({s for s in self.sequences if self.sequences.count(s) > 1})
            if repeated:
                raise ValueError(f"sequences are repeated: {repeated}")
        return self


class Table1Settings(_Strict):
    """``jobs/table1.py``: the paper's Table 1, each row trained in dependency order and evaluated on TIR sequences.

    Each trained row starts from ``model.init_checkpoint`` (the teacher, row A1), except the D rows, which start from
    B3's IoU-Net with C1's classifier (§4.3; the job sets their ``distill.start``); each trains at its own paper rates
    times ``distill.lr_scale`` unless ``distill.lr_tcl`` / ``distill.lr_bbe`` are set (then logged as overrides),
    with ``distill``'s schedule and the row's pseudo boxes.
    """

    rows: list[VariantName] | None = Field(
        None,
        description="rows of the table (default: every row model.architecture has); the rows they depend on "
        "(B3: B1, B2; D rows: B1, B2, B3, C1) and A1 are added",
    )
    seeds: int = Field(1, ge=1, le=20, description="trainings per row, at distill.seed, distill.seed + 1, …")
    epochs: int | None = Field(None, ge=1, description="each row's epochs (unset: distill.epochs)")
    samples_per_epoch: int | None = Field(
        None, ge=1, description="each row's samples per epoch (unset: distill.samples_per_epoch)"
    )
    run_name: str = Field(
        "table1",
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="names the parent MLflow run, each row's training run (<run_name>-<row>-s<seed>) and the "
        "folders of merged weights (storage.storage_path/<run_name>) and results (evaluation.results_dir/<run_name>)",
    )


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
    table1: Table1Settings = Field(default_factory=Table1Settings)

    @model_validator(mode="after")
    def _epoch_fits_workers(self) -> Config:
        for name, section in (("distill", self.distill), ("pretrain", self.pretrain)):
            global_batch = section.batch_size * self.scaling.num_workers
            if section.samples_per_epoch < global_batch:
                raise ValueError(
                    f"{name}.samples_per_epoch ({section.samples_per_epoch}) is smaller than one global batch "
                    f"({name}.batch_size {section.batch_size} x scaling.num_workers {self.scaling.num_workers})"
                )
        return self

    @model_validator(mode="after")
    def _losses_fit_model_and_data(self) -> Config:
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

    @model_validator(mode="after")
    def _selection_has_its_own_split(self) -> Config:
        select_by = self.distill.select_by
        if select_by == "last":
            return self
        root = self.tune.eval_root
        if not (root and root.strip()):
            raise ValueError(
                f"distill.select_by={select_by} tracks labeled TIR validation sequences after every scored epoch: "
                "set tune.eval_root (a local folder or s3:// prefix, e.g. the tir_sequences folder of a second "
                "cmd-ray synth set), or distill.select_by=last"
            )
        if same_location(root, self.evaluation.root) and not _disjoint(
            self.tune.eval_sequences, self.evaluation.sequences
        ):
            raise ValueError(
                f"distill.select_by={select_by}: tune.eval_root ({root!r}) is evaluation.root, the test sequences the "
                "evaluation reports; choosing weights on them biases that report. Point tune.eval_root at a separate "
                "validation split (or give tune.eval_sequences and evaluation.sequences without a common sequence)"
            )
        return self

    @model_validator(mode="after")
    def _table1_rows_fit_model(self) -> Config:
        if self.table1.rows is not None:
            try:
                vocabulary.table1_rows(self.table1.rows, self.model.architecture)
            except ValueError as exc:
                raise ValueError(f"table1.rows: {exc}") from None
        return self

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on every worker (the global batch divides the epoch)."""
        return self.distill.samples_per_epoch // (self.distill.batch_size * self.scaling.num_workers)

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted keys to plain values, for MLflow params."""
        return flatten_tree(self.model_dump(mode="json"))


def same_location(a: str, b: str) -> bool:
    """Whether two data URIs name the same folder: ``s3://`` prefixes compared without trailing slashes, local
    paths (plain or ``file://``) after making them absolute and normal (``./x/`` and ``x`` are the same)."""

    def canonical(uri: str) -> str:
        uri = uri.strip()
        if uri.startswith("s3://"):
            return uri.rstrip("/")
        if uri.startswith("file://"):
            uri = uri[len("file://") :]
        return os.path.normpath(os.path.abspath(os.path.expanduser(uri)))

    return canonical(a) == canonical(b)


def _disjoint(first: list[str] | None, second: list[str] | None) -> bool:
    """Two sequence selections of one root share no sequence (``None``: every sequence of the root)."""
    return first is not None and second is not None and not set(first) & set(second)


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config tree to ``{"section.key": leaf value}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, dotted + "."))
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
