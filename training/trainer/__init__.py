"""Training one subject: the typed config, its input checks, the loop, losses, checkpoints, outputs, lock."""
