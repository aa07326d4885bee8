"""Training: the loop, its recipe pieces (sampling, augmentation, schedule, losses), checkpoints, data preparation."""
