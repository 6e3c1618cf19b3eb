"""Small training specs shared by the tests that run the real CLI on them."""

from __future__ import annotations

import textwrap

# one clean phase of two steps on toy-ioi: the least a `train` command can do
ONE_PHASE_TRAIN = textwrap.dedent("""\
    model: toy-ioi
    task: ioi
    seed: 0
    eval: {every_steps: 2, n: 40, lm_docs: 10}
    phases:
      - name: clean
        data: {n: 32, seed: 0}
        epochs: 1
        batch_size: 16
    """)
