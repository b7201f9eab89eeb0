"""The names everything else agrees on: the paper's Table 1 rows and the names of the choices a config makes.

The bottom of the layer stack (see ``[tool.importlinter]`` in ``pyproject.toml``): this module imports nothing
from ``cmd_ray`` (the standard library only), so :mod:`cmd_ray.config` derives its allowed values from it, and
``data``, ``models``, ``distill`` and ``train`` read the Table 1 rows from it, without any of them importing a
higher layer.

Table 1 rows (A1, B1–B3, C1, D1–D5): a :class:`Variant` says which modality feeds the reference (train) and
the test branch, which module (``tcl``: target classifier, ``bbe``: IoU-Net box estimator) is fine-tuned on
which branch, how the pseudo boxes are made, and the paper's learning rates (§4.2: 1e-6 when one module is
trained; 1e-7 for BBE and 2e-8 for TCL when both are). A module that is not trained has rate 0.

Modality ``"mix"`` (D3–D5) feeds both modalities to both branches (the paper's "RGB-TIR" / "TIR-RGB"); both
branches are trained. How a mini-batch mixes them is ``distill.mixing`` (:data:`MIXINGS`):

- ``"batch_split"`` (default; what the paper's §4 describes): the first ``ceil(B/2)`` samples feed RGB to the
  reference branch and TIR to the test branch, the rest TIR to the reference and RGB to the test branch.
- ``"side_by_side"`` (the authors' released code): every sample's two modalities are put side by side in one
  image, ``[RGB | TIR]`` for the reference branch and ``[TIR | RGB]`` for the test branch, the pseudo box at its
  place in the left half; the per-sample modalities are then ``"rgb_tir"`` and ``"tir_rgb"``.

Branch meaning per module (:attr:`Variant.trained_modules`; what :func:`cmd_ray.models.dimpnet.parameter_groups`
trains):

- ``bbe``: ``"reference"`` = ``bb_regressor.*r`` (:data:`BBE_REFERENCE_MODULES`); ``"test"`` = ``bb_regressor.*t``
  + ``iou_predictor`` (:data:`BBE_TEST_MODULES`). No IoU-Net module runs on both frames.
- ``tcl``: ``"reference"`` = classifier features + filter initializer + filter optimizer (the filter is
  learnt from the reference frame); ``"test"`` = classifier features only (the one TCL part that
  processes the test frame); ``"both"`` = all of them.

The classifier features (``classifier.feature_extractor``) are the one trained module shared by both branches
(:data:`SHARED_MODULES`): it runs on the reference and on the test frame. A row trains it only through the
branch(es) it names: C1 and D2 (TCL on the reference branch) run it on the test frame with its parameters
detached, D1 (TCL on the test branch) on the reference frame; D3–D5 train it through both.

B3 is not trained: it merges B1's reference branch with B2's test branch of the IoU-Net
(``merge_of``, :mod:`cmd_ray.distill.merge`); asking to train it raises ``ValueError``.

Where a trained row starts (:data:`STARTS`): B1, B2 and C1 from the teacher; the D rows, in the paper, from B3's
IoU-Net with C1's classifier (``init_from``, §4.3). A D row trained from the teacher instead runs the row's loss and
schedule but is not the paper's row: :func:`run_label` names what ran (``"D3"``, or ``"D3 loss from the teacher"``)
for tables, MLflow run tags and registry descriptions alike.

The other names: pseudo-box methods (:data:`BOX_METHODS`, implemented in :mod:`cmd_ray.data.boxes`), loss
forms (:data:`TCL_LOSS_FORMS`, :data:`BBE_LOSS_FORMS`, implemented in :mod:`cmd_ray.distill.losses`),
benchmarks, network architectures and presets, sampling and tracker presets. A unit test
(``tests/test_vocabulary.py``) checks that the config and the registries agree with these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# --------------------------------------------------------------------------- names of the choices

BOX_METHODS: tuple[str, ...] = ("center", "random", "detection", "hotspot")
"""Pseudo-box methods (``data.boxes``); each has an entry in :data:`cmd_ray.data.boxes.BOX_METHODS`."""

TCL_LOSS_FORMS: tuple[str, ...] = ("lbhinge", "squared")
"""Data terms of L_TCL (``distill.tcl_loss``); each has an entry in :data:`cmd_ray.distill.losses.TCL_LOSS_FORMS`."""

BBE_LOSS_FORMS: tuple[str, ...] = ("mse", "kl")
"""Data terms of L_BBE (``distill.bbe_loss``); each has an entry in :data:`cmd_ray.distill.losses.BBE_LOSS_FORMS`."""

BENCHMARKS: tuple[str, ...] = ("synthetic", "lsotb", "ptb")
"""Evaluation benchmarks (``evaluation.benchmark``), read by :mod:`cmd_ray.evaluation.benchmarks`."""

ARCHITECTURES: tuple[str, ...] = ("dimp", "atom")
"""Network architectures (``model.architecture``)."""

MODEL_PRESETS: dict[str, tuple[str, ...]] = {
    "dimp": ("tiny", "dimp18", "dimp50", "superdimp"),
    "atom": ("tiny", "atom18", "atom50"),
}
"""Network presets allowed per ``model.architecture`` (see :mod:`cmd_ray.models.dimpnet`)."""

MODEL_PRESET_NAMES: tuple[str, ...] = tuple(dict.fromkeys(p for names in MODEL_PRESETS.values() for p in names))
"""Every network preset (``model.preset``), in the order of :data:`MODEL_PRESETS`."""

PRESET_BACKBONE: dict[str, str] = {
    "tiny": "tiny",
    "dimp18": "resnet18",
    "dimp50": "resnet50",
    "superdimp": "resnet50",
    "atom18": "resnet18",
    "atom50": "resnet50",
}
"""The backbone each network preset uses."""

SAMPLING_PRESETS: tuple[str, ...] = ("dimp50", "superdimp")
"""Named training-crop geometries (``data.sampling.preset``; ``custom`` sets every field itself)."""

TRACKER_PRESETS: tuple[str, ...] = ("dimp50", "superdimp", "tiny")
"""Online tracker parameter sets (``tracker.preset``)."""

MIXINGS: tuple[str, ...] = ("batch_split", "side_by_side")
"""How the mix rows (D3–D5) put RGB and TIR on the two branches (``distill.mixing``; see the module docstring)."""

# --------------------------------------------------------------------------- Table 1

Modality = Literal["rgb", "tir", "mix"]
SequenceModality = Literal["tir", "rgb"]
"""What an evaluation pass decodes: the TIR benchmark, or its pixel-aligned RGB twins (the modality gap)."""
Branch = Literal["reference", "test", "both"]

BBE_REFERENCE_MODULES: tuple[str, ...] = ("conv3_1r", "conv4_1r", "fc3_1r", "fc34_3r", "fc34_4r")
"""The IoU-Net's reference-branch modules (under ``bb_regressor``): they pool the reference target."""

BBE_TEST_MODULES: tuple[str, ...] = (
    "conv3_1t",
    "conv3_2t",
    "conv4_1t",
    "conv4_2t",
    "fc3_rt",
    "fc4_rt",
    "iou_predictor",
)
"""The IoU-Net's test-branch modules (under ``bb_regressor``): they score the test proposals."""

BRANCH_MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "tcl": {
        "reference": ("classifier.feature_extractor", "classifier.filter_initializer", "classifier.filter_optimizer"),
        "test": ("classifier.feature_extractor",),
    },
    "bbe": {
        "reference": tuple(f"bb_regressor.{name}" for name in BBE_REFERENCE_MODULES),
        "test": tuple(f"bb_regressor.{name}" for name in BBE_TEST_MODULES),
    },
}
"""``{"tcl" | "bbe": {branch: module names}}``: the modules a row trains when it trains that module's branch."""

SHARED_MODULES: tuple[str, ...] = tuple(
    name for parts in BRANCH_MODULES.values() for name in parts["reference"] if name in parts["test"]
)
"""Trained modules that run on both the reference and the test frame: ``classifier.feature_extractor`` only."""

LR_SINGLE = 1e-6
LR_JOINT_BBE = 1e-7
LR_JOINT_TCL = 2e-8


@dataclass(frozen=True)
class Variant:
    """One Table 1 row.

    Attributes:
        name: row id, e.g. ``"D3"``.
        meaning: one line of what the row does.
        reference_modality: modality on the reference branch (``"mix"``: see module docstring).
        test_modality: modality on the test branch.
        train_tcl: branch of the target classifier that is fine-tuned, or ``None``.
        train_bbe: branch of the IoU-Net that is fine-tuned, or ``None``.
        box_method: pseudo-box generation, one of :data:`BOX_METHODS`.
        lr_tcl: the paper's learning rate for the TCL parameters (0 when not trained).
        lr_bbe: the paper's learning rate for the BBE parameters (0 when not trained).
        merge_of: for merge rows, ``(module, branch, source variant)`` triples to combine.
        init_from: rows whose weights the paper starts from (D rows: the B3 + C1 combination).
    """

    name: str
    meaning: str
    reference_modality: Modality
    test_modality: Modality
    train_tcl: Branch | None
    train_bbe: Branch | None
    box_method: str
    lr_tcl: float
    lr_bbe: float
    merge_of: tuple[tuple[str, Branch, str], ...] = ()
    init_from: tuple[str, ...] = ()

    @property
    def trains(self) -> dict[str, Branch | None]:
        """``{"tcl": branch | None, "bbe": branch | None}``."""
        return {"tcl": self.train_tcl, "bbe": self.train_bbe}

    @property
    def is_merge(self) -> bool:
        """True for rows made by merging other rows' weights (B3), which are not trained directly."""
        return bool(self.merge_of)

    @property
    def trains_anything(self) -> bool:
        return self.train_tcl is not None or self.train_bbe is not None

    @property
    def is_mix(self) -> bool:
        """True for the rows that feed both modalities to both branches (D3–D5)."""
        return self.reference_modality == "mix" or self.test_modality == "mix"

    @property
    def trained_modules(self) -> dict[str, Branch]:
        """``{module name: branch}``: every module the row trains and the branch(es) it gets gradients through.

        Names are dotted module paths of DiMPNet (``classifier.feature_extractor``, ``bb_regressor.conv3_1r``, …).
        A module of one branch gets that branch (the filter initializer and optimizer: ``"reference"``); the
        shared ``classifier.feature_extractor`` (:data:`SHARED_MODULES`) gets the branch the row trains TCL on
        (``"both"`` for D3–D5). Empty for A1 and the merge row B3.
        """
        modules: dict[str, Branch] = {}
        for key, branch in self.trains.items():
            if branch is None:
                continue
            sides = ("reference", "test") if branch == "both" else (branch,)
            for side in sides:
                for name in BRANCH_MODULES[key][side]:
                    modules[name] = "both" if modules.get(name, side) != side else side
        return modules

    def sample_modalities(
        self, batch_size: int, mixing: str = "batch_split"
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Per-sample modality of the reference and of the test image in a mini-batch.

        ``"rgb"`` or ``"tir"``; for a mix row with ``mixing="side_by_side"``, ``"rgb_tir"`` (an ``[RGB | TIR]``
        image) on the reference and ``"tir_rgb"`` (``[TIR | RGB]``) on the test branch for every sample. Each is
        the name of the batch key holding that crop, with ``_ref`` / ``_test`` appended
        (:mod:`cmd_ray.distill.step`). ``mixing`` only concerns the mix rows; the others ignore it.
        """
        if mixing not in MIXINGS:
            raise ValueError(f"unknown mixing {mixing!r}; allowed: {', '.join(MIXINGS)}")
        if self.is_mix and mixing == "side_by_side":
            return ("rgb_tir",) * batch_size, ("tir_rgb",) * batch_size
        if self.is_mix:
            first = math.ceil(batch_size / 2)
            ref = ("rgb",) * first + ("tir",) * (batch_size - first)
            test = ("tir",) * first + ("rgb",) * (batch_size - first)
            return ref, test
        return (self.reference_modality,) * batch_size, (self.test_modality,) * batch_size


def _bbe(name: str, meaning: str, ref: Modality, test: Modality, branch: Branch) -> Variant:
    return Variant(name, meaning, ref, test, None, branch, "center", lr_tcl=0.0, lr_bbe=LR_SINGLE)


def _joint(name: str, meaning: str, ref: Modality, test: Modality, branch: Branch, boxes: str) -> Variant:
    return Variant(name, meaning, ref, test, branch, branch, boxes, LR_JOINT_TCL, LR_JOINT_BBE, init_from=("B3", "C1"))


_MIX = "mix of RGB->TIR and TIR->RGB (distill.mixing: half the batch each way, or side by side)"

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("A1", "baseline: the RGB tracker as is, nothing trained", "rgb", "rgb", None, None, "center", 0.0, 0.0),
        _bbe("B1", "BBE learnt on the reference branch (TIR there)", "tir", "rgb", "reference"),
        _bbe("B2", "BBE learnt on the test branch (TIR there)", "rgb", "tir", "test"),
        Variant(
            "B3",
            "BBE merge: B1's reference branch with B2's test branch",
            "tir",
            "tir",
            None,
            None,
            "center",
            lr_tcl=0.0,
            lr_bbe=LR_SINGLE,
            merge_of=(("bbe", "reference", "B1"), ("bbe", "test", "B2")),
        ),
        Variant(
            "C1",
            "TCL learnt on the reference branch (TIR there)",
            "tir",
            "rgb",
            "reference",
            None,
            "center",
            lr_tcl=LR_SINGLE,
            lr_bbe=0.0,
        ),
        _joint("D1", "TCL+BBE jointly learnt on the test branch (TIR there)", "rgb", "tir", "test", "center"),
        _joint("D2", "TCL+BBE jointly learnt on the reference branch (TIR there)", "tir", "rgb", "reference", "center"),
        _joint(
            "D3",
            f"TCL+BBE jointly learnt on both branches, {_MIX} (the paper's best row)",
            "mix",
            "mix",
            "both",
            "center",
        ),
        _joint("D4", "D3 with 'random sampling' pseudo boxes", "mix", "mix", "both", "random"),
        _joint("D5", "D3 with detector pseudo boxes", "mix", "mix", "both", "detection"),
    )
}

VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)
"""The Table 1 row names (``distill.variant``)."""


def get_variant(name: str | Variant) -> Variant:
    """The :class:`Variant` called ``name`` (a ``Variant`` passes through); ``ValueError`` lists allowed names."""
    if isinstance(name, Variant):
        return name
    try:
        return VARIANTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown variant {name!r}; allowed: {', '.join(VARIANTS)}") from None


SUPERVISED_DIMP = Variant(
    "PT",
    "supervised teacher training on labeled RGB sequences: classifier and IoU-Net, both branches",
    "rgb",
    "rgb",
    "both",
    "both",
    "center",
    lr_tcl=0.0,
    lr_bbe=0.0,
)
"""Not a Table 1 row: ``jobs/pretrain.py`` trains every head module on RGB, as ordinary DiMP training does."""

SUPERVISED_ATOM = Variant(
    "PT",
    "supervised teacher training on labeled RGB sequences: IoU-Net, both branches",
    "rgb",
    "rgb",
    None,
    "both",
    "center",
    lr_tcl=0.0,
    lr_bbe=0.0,
)
"""ATOM's supervised training: the IoU-Net only (ATOM has no target classifier to learn offline)."""


def supervised_variant(architecture: str) -> Variant:
    """The training plan of ``jobs/pretrain.py`` for ``model.architecture`` (``dimp`` or ``atom``)."""
    return SUPERVISED_ATOM if architecture == "atom" else SUPERVISED_DIMP


START_TEACHER = "teacher"
START_D = "merge(B3,C1)"
STARTS: tuple[str, ...] = (START_TEACHER, START_D)
"""Where a trained row's weights start (MLflow tag ``cmd_ray.start``): the teacher (``model.init_checkpoint``), or
B3's IoU-Net with C1's classifier (``distill.start``), where the paper starts the D rows (§4.3)."""


def paper_start(name: str | Variant) -> str:
    """Where the paper starts row ``name``: :data:`START_D` for the D rows (``init_from``), else the teacher."""
    return START_D if get_variant(name).init_from else START_TEACHER


def run_label(name: str | Variant, start: str) -> str:
    """What a training of row ``name`` from ``start`` (one of :data:`STARTS`) is called wherever it is shown.

    The row's own name when it started where the paper starts it (:func:`paper_start`); otherwise the row's loss
    and schedule from another start, e.g. ``"D3 loss from the teacher"``: a D row trained from the teacher is not
    the paper's D3, which starts from merge(B3, C1).

    Raises:
        ValueError: an unknown row or start.
    """
    variant = get_variant(name)
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}; allowed: {', '.join(STARTS)}")
    if start == paper_start(variant):
        return variant.name
    return f"{variant.name} loss from {'the teacher' if start == START_TEACHER else start}"


def row_dependencies(name: str) -> tuple[str, ...]:
    """The rows whose weights row ``name`` is made from, directly or not (B3: B1, B2; D rows: B1, B2, B3, C1)."""
    variant = get_variant(name)
    direct = [source for _, _, source in variant.merge_of] + list(variant.init_from)
    found: dict[str, None] = {}
    for source in direct:
        found.update(dict.fromkeys(row_dependencies(source)))
        found[source] = None
    return tuple(row for row in VARIANT_NAMES if row in found)


def table1_rows(rows: list[str] | tuple[str, ...] | None, architecture: str = "dimp") -> tuple[str, ...]:
    """The rows a Table 1 of ``rows`` needs, in dependency order (the order of :data:`VARIANTS`): A1 (the teacher,
    every delta's reference), the rows asked for (``None``: every row ``architecture`` has) and what they depend on.

    Raises:
        ValueError: an unknown row, or a row that trains the classifier for ``architecture="atom"``.
    """

    def has_classifier_row(row: str) -> bool:
        return get_variant(row).train_tcl is not None or any(get_variant(d).train_tcl for d in row_dependencies(row))

    asked = list(VARIANT_NAMES) if rows is None else [get_variant(row).name for row in rows]
    if architecture == "atom":
        if rows is None:
            asked = [row for row in asked if not has_classifier_row(row)]
        wrong = [row for row in asked if has_classifier_row(row)]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: the target classifier is trained there, and ATOM has none")
    needed = {"A1", *asked, *(dep for row in asked for dep in row_dependencies(row))}
    return tuple(row for row in VARIANT_NAMES if row in needed)
