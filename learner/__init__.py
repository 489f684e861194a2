"""Learning: synthetic dataset, supervised pre-training, checkpoints (and later the replay buffer and PPO)."""
