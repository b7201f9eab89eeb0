"""One line of text per training epoch, the same in a run's log (printed as the epoch ends) and in the job's
summary."""

from __future__ import annotations

from collections.abc import Mapping


def epoch_line(row: Mapping[str, float]) -> str:
    """``epoch E: loss … (tcl …, bbe …)``, then the validation losses and the tracking scores where ``row`` (an
    epoch's reported metrics) holds them."""
    line = f"epoch {int(row['epoch'])}: loss {row['loss']:.4f} (tcl {row['loss_tcl']:.4f}, bbe {row['loss_bbe']:.4f})"
    if "val_loss" in row:
        line += f"  val_loss {row['val_loss']:.4f} (tcl {row['val_loss_tcl']:.4f}, bbe {row['val_loss_bbe']:.4f}"
        if "val_loss_bbe_chance" in row:  # an IoU-Net that has learnt nothing scores this
            line += f"; a constant prediction: {row['val_loss_bbe_chance']:.4f}"
        line += ")"
    if "val_success" in row:  # the epochs that tracked the validation sequences
        line += f"  val_success {row['val_success']:.4f} (precision {row['val_precision']:.4f})"
    return line
