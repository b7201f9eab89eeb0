"""Pure NumPy/OpenCV data code: pairs, synthetic data, pseudo boxes, DiMP sampling (no Ray here)."""
