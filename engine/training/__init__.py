"""Training: image/mask folder datasets split by case, H&E augmentation, the cancellable and
resumable trainer, safetensors checkpoints, metrics, evaluation, CLI commands and the benchmark."""
