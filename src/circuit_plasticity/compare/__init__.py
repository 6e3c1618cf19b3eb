"""How mechanisms change between checkpoints: cross-model patching, weights, the findings."""
