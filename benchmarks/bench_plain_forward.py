"""The hook-free forward (models/plain.py) against the bridge's, side by side in one process on
one thread: a training step's forward and backward (batch 32 of IOI-length prompts) and the
evaluation forward during training (300 held-out prompts; and with END given, where the last
block attends from END alone and only END is unembedded), on each embedded model; and a
fine-tuning step with the loss on the answer alone (the studies' `loss: answer`), through the
bridge's whole forward against the plain forward at END (not used for training: it rounds apart).

Run: python benchmarks/bench_plain_forward.py [--repeats 15]
"""

from __future__ import annotations

import argparse

from common import best_of, report


def main() -> None:
    import torch

    from circuit_plasticity.models.load import load_model
    from circuit_plasticity.models.plain import plain_logits
    from circuit_plasticity.training.loss import next_token_loss

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in ("toy-ioi", "toy-gt", "toy-ioi-large"):
        model = load_model(name).model
        generator = torch.Generator().manual_seed(0)
        train = torch.randint(0, model.cfg.d_vocab, (32, 21), generator=generator)
        held_out = torch.randint(0, model.cfg.d_vocab, (300, 21), generator=generator)
        forwards = {"bridge": model, "plain": lambda t, m=model: plain_logits(m, t)}
        result: dict[str, float | str] = {"model": name}
        for label, forward in forwards.items():

            def step(forward=forward, model=model, train=train):
                model.zero_grad(set_to_none=True)
                forward(train).float().logsumexp(-1).mean().backward()

            def evaluate(forward=forward, held_out=held_out):
                with torch.no_grad():
                    forward(held_out)

            result[f"{label}_train_step_ms"] = round(1e3 * best_of(step, args.repeats, 3), 2)
            result[f"{label}_eval_ms"] = round(1e3 * best_of(evaluate, args.repeats, 2), 2)
        end = torch.randint(10, 21, (300,), generator=generator)

        def evaluate_end(model=model, held_out=held_out, end=end):
            with torch.no_grad():
                plain_logits(model, held_out, end)

        result["plain_end_eval_ms"] = round(1e3 * best_of(evaluate_end, args.repeats, 2), 2)
        answer_at = torch.randint(10, 20, (32,), generator=generator)  # END; the answer follows it
        rows = torch.arange(32)
        answer_mask = torch.zeros_like(train, dtype=torch.bool)
        answer_mask[rows, answer_at + 1] = True

        def answer_step_bridge(model=model, train=train, answer_mask=answer_mask):
            model.zero_grad(set_to_none=True)
            next_token_loss(model(train), train, answer_mask).backward()

        def answer_step_end(model=model, train=train, answer_at=answer_at, rows=rows):
            model.zero_grad(set_to_none=True)
            end = plain_logits(model, train, answer_at)
            torch.nn.functional.cross_entropy(end, train[rows, answer_at + 1]).backward()

        result["bridge_answer_step_ms"] = round(1e3 * best_of(answer_step_bridge, args.repeats, 3), 2)
        result["plain_end_answer_step_ms"] = round(1e3 * best_of(answer_step_end, args.repeats, 3), 2)
        result["answer_step_speedup"] = round(
            result["bridge_answer_step_ms"] / result["plain_end_answer_step_ms"], 2
        )
        for part in ("train_step", "eval"):
            result[f"{part}_speedup"] = round(result[f"bridge_{part}_ms"] / result[f"plain_{part}_ms"], 2)
        result["end_eval_speedup"] = round(result["bridge_eval_ms"] / result["plain_end_eval_ms"], 2)
        report("plain_forward", result)


if __name__ == "__main__":
    main()
