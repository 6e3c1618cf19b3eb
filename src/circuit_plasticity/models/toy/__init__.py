"""The embedded toy models: their tokenizer, corpus and shipped weights (pretraining: training/pretrain.py).

toy-ioi (attention-only, IOI), toy-gt (with MLPs, Greater-Than) and toy-ioi-large (4 layers x 8
heads with MLPs, IOI; docs/toy-ioi-large.md) share one vocabulary.
"""

from pathlib import Path

TOY_DIR = Path(__file__).resolve().parent.parent / "toy_ioi"
TOY_GT_DIR = Path(__file__).resolve().parent.parent / "toy_gt"
TOY_LARGE_DIR = Path(__file__).resolve().parent.parent / "toy_ioi_large"
TOY_DIRS = {"toy-ioi": TOY_DIR, "toy-gt": TOY_GT_DIR, "toy-ioi-large": TOY_LARGE_DIR}
