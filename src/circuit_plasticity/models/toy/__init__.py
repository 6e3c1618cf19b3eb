"""The embedded toy model: its tokenizer, corpus, training and shipped weights."""

from pathlib import Path

TOY_DIR = Path(__file__).resolve().parent.parent / "toy_ioi"
