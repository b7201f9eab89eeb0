"""distill_step dispatches the loss forms through their registries, with each form's options model."""

from __future__ import annotations

import pytest
import torch

from cmd_ray.distill import losses
from cmd_ray.distill.losses import BBE_LOSS_FORMS, TCL_LOSS_FORMS, BbeLossForm, TclLossForm, TclLossOptions
from cmd_ray.distill.step import distill_step
from cmd_ray.models.dimpnet import build_dimpnet


class ScaledOptions(TclLossOptions):
    scale: float = 1.0


def _scaled_squared(scores, label, options: ScaledOptions) -> torch.Tensor:
    weight_init, weight_iter, weight_final = options.clf_loss_weights
    return options.scale * losses.squared_tcl_loss(
        scores, label, weight_init=weight_init, weight_iter=weight_iter, weight_final=weight_final
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_dimpnet("tiny", optim_iter=2).eval()


def test_a_registered_tcl_form_is_used_with_its_own_options(monkeypatch, model, random_batch):
    monkeypatch.setitem(TCL_LOSS_FORMS, "scaled", TclLossForm(_scaled_squared, ScaledOptions))
    batch = random_batch(crop=128, seed=3)
    with torch.no_grad():
        squared = distill_step(model, batch, "C1", 1.0, tcl_loss="squared", clf_loss_weights=(1.0, 2.0, 3.0))
        scaled = distill_step(model, batch, "C1", 1.0, tcl_loss="scaled", clf_loss_weights=(1.0, 2.0, 3.0), scale=0.5)
    assert scaled["loss_tcl"].item() == pytest.approx(0.5 * squared["loss_tcl"].item(), rel=1e-5)


def test_a_bbe_form_names_the_batch_keys_it_needs(monkeypatch, model, random_batch):
    def constant(iou_pred, batch, options):
        return (iou_pred * 0).sum() + batch["extra"].sum()

    monkeypatch.setitem(BBE_LOSS_FORMS, "constant", BbeLossForm(constant, batch_keys=("extra",), batch_hint="add it"))
    batch = random_batch(crop=128, seed=4)
    with pytest.raises(ValueError, match="needs 'extra' in the batch: add it"):
        distill_step(model, batch, "B1", 1.0, bbe_loss="constant")
    batch["extra"] = torch.tensor([2.0, 3.0])
    with torch.no_grad():
        assert distill_step(model, batch, "B1", 1.0, bbe_loss="constant")["loss_bbe"].item() == pytest.approx(5.0)


def test_unknown_forms_name_the_registered_ones():
    with pytest.raises(ValueError, match="allowed: lbhinge, squared"):
        losses.tcl_loss_form("l1")
    with pytest.raises(ValueError, match="allowed: mse, kl"):
        losses.bbe_loss_form("l1")
