"""Training and inference: losses, the training loop, distributed helpers, volume inference."""
