"""How steady a model's discovered IOI circuit is across prompts: the circuit found on 120 held-out
prompts (three seeds, the setting of tests/test_toy_ioi_large.py), its size and name movers, and
its faithfulness on the next 120. Prints one line per seed (docs/toy-ioi-large.md's log).

Run: python docs/toy_ioi_large_circuits.py [MODEL]   (default toy-ioi-large; a model directory works)
"""

from __future__ import annotations

import sys


def main(model_name: str) -> None:
    import torch

    from circuit_plasticity.analysis.faithfulness import evaluate_circuit
    from circuit_plasticity.analysis.hooks import component_labels
    from circuit_plasticity.analysis.pipeline import circuit_of
    from circuit_plasticity.components import component_name
    from circuit_plasticity.models.load import load_model
    from circuit_plasticity.training.evaluate import task_batch

    torch.set_num_threads(1)
    loaded = load_model(model_name, device="cpu")
    total = len(component_labels(loaded.model))
    for found_seed in (7, 11, 21):
        found = task_batch(loaded, "ioi", n=120, seed=found_seed, split="test")
        measured = task_batch(loaded, "ioi", n=120, seed=found_seed + 1, split="test")
        circuit = circuit_of(loaded, found)
        scores = evaluate_circuit(loaded.model, measured, circuit, minimality_steps=0)
        members = ", ".join(component_name(c) for c in sorted(circuit.head_set()))
        movers = ", ".join(component_name(c) for c in circuit.by_role("name_mover")) or "none"
        print(
            f"prompts seed {found_seed}: {len(circuit.head_set())} of {total} components "
            f"(faithfulness {scores.faithfulness:.2f} on seed {found_seed + 1}); "
            f"name movers {movers}; members {members}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "toy-ioi-large")
