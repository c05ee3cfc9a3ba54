"""Several models and LoRAs: the registry (models.toml), the LoRA folder, model-aware queueing."""
