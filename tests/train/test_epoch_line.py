"""The line a training epoch leaves in the log and in the job's summary."""

from cmd_ray.train.epoch_line import epoch_line

LOSSES = {"epoch": 3.0, "loss": 1.23456, "loss_tcl": 1.0, "loss_bbe": 0.23456}


def test_an_epoch_without_validation_shows_its_losses():
    assert epoch_line(LOSSES) == "epoch 3: loss 1.2346 (tcl 1.0000, bbe 0.2346)"


def test_validation_losses_the_iou_nets_chance_level_and_tracking_scores_follow_where_reported():
    row = {**LOSSES, "val_loss": 2.5, "val_loss_tcl": 2.0, "val_loss_bbe": 0.5, "val_loss_bbe_chance": 0.25}
    assert epoch_line(row).endswith("val_loss 2.5000 (tcl 2.0000, bbe 0.5000; a constant prediction: 0.2500)")
    tracked = epoch_line({**row, "val_success": 0.3, "val_precision": 0.4})
    assert tracked.endswith("a constant prediction: 0.2500)  val_success 0.3000 (precision 0.4000)")
