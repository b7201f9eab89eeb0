"""Pure-PyTorch DiMP tracker parts (backbone, TCL classifier, BBE IoU-Net) with pytracking's module names."""
