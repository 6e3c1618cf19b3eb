"""circuit-plasticity: what fine-tuning, poisoning and retraining do to a model's circuits."""

__version__ = "0.1.0"
