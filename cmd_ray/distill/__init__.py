"""Cross-modal distillation: the paper's Table 1 variants, the losses of Eq. 1–3 and one training step."""
