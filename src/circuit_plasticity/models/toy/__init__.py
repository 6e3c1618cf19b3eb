"""The embedded toy models: their tokenizer, corpus and shipped weights (pretraining: training/pretrain.py).

toy-ioi (attention-only, IOI) and toy-gt (with MLPs, Greater-Than) share one vocabulary.
"""

from pathlib import Path

TOY_DIR = Path(__file__).resolve().parent.parent / "toy_ioi"
TOY_GT_DIR = Path(__file__).resolve().parent.parent / "toy_gt"
TOY_DIRS = {"toy-ioi": TOY_DIR, "toy-gt": TOY_GT_DIR}
