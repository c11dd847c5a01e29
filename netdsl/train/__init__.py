"""Training: optimizers, schedules, datasets, checkpoints and the training loop."""
