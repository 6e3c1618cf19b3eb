"""Models: one loading API for the embedded toy model, hub models, local dirs and checkpoints."""
