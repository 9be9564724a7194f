"""Training engine: the ECN trainer and its checkpoints."""
