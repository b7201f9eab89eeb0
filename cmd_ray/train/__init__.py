"""Ray Train: the training loop per worker, the TorchTrainer around it, and the teacher it starts from."""
