"""cmd-ray: unsupervised cross-modal distillation of thermal-infrared trackers on Ray."""

__version__ = "0.1.0"
