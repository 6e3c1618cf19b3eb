"""Training: the fine-tuning protocol, one resumable phase loop, losses."""
