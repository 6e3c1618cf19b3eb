"""The study with the Hugging Face Trainer doing the training: fine-tune, poison, retrain (and
a control), track the circuit during training with `CircuitTracker`, then `judge`.

    python examples/trainer_study.py --out runs/trainer-study            # full fine-tunes
    python examples/trainer_study.py --out runs/trainer-lora --lora      # LoRA adapters (peft)

The model is the embedded toy-gt (Greater-Than), exported as the GPT-2 it is
(`circuit-plasticity export`); any causal LM folder or hub name works the same way with
--base. Every phase is a Trainer output folder; `judge` takes each as `DIR@all`: its last
checkpoint is judged and every checkpoint tracked (docs/bring-your-own-checkpoints.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from circuit_plasticity.api import judge_and_report
from circuit_plasticity.models.export import export_model
from circuit_plasticity.models.load import hf_tokenizer
from circuit_plasticity.models.tokenizers import load_tokenizer
from circuit_plasticity.study.hf_callback import CircuitTracker
from circuit_plasticity.study.judge import JudgeOptions, SeedModels, judge
from circuit_plasticity.tasks.build import build_dataset
from circuit_plasticity.tasks.encode import encode_examples
from circuit_plasticity.training.data import train_tensors

TASK = "greater-than"
# phase -> (parent, poison, epochs, data seed): the study's protocol (docs/training.md)
PHASES = {
    "clean": ("base", None, 2, 0),
    "poisoned": ("clean", "greater-than", 2, 1),
    "retrain": ("poisoned", None, 2, 2),
    "control": ("clean", None, 4, 3),  # as long as poisoned + retrain, clean data only
}


class Prompts(torch.utils.data.Dataset):
    """Training prompts with the answer as the only label (the study's `loss: answer`)."""

    def __init__(self, tokenizer, n: int, seed: int, poison: str | None):
        examples, _ = build_dataset(TASK, n, seed, tokenizer, split="train", poison=poison)
        data = train_tensors(encode_examples(examples, tokenizer, prepend_bos=True), tokenizer.pad_id)
        self.input_ids = data.tokens
        self.labels = torch.where(data.loss_mask, data.tokens, torch.full_like(data.tokens, -100))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


def train_phase(args, name: str, parent_dir: Path, base_dir: Path, tok, hf_tok) -> tuple[Path, Path]:
    """One phase with the Trainer: (its output folder, the merged model the next phase starts from)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    _, poison, epochs, data_seed = PHASES[name]
    out = args.out / "phases" / name
    model = AutoModelForCausalLM.from_pretrained(parent_dir)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["c_attn", "c_proj", "c_fc"],
            fan_in_fan_out=True,
            lora_dropout=0.0,
        )
        model = get_peft_model(model, lora)
    training = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=args.lr * (5 if args.lora else 1),
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=args.save_every,
        logging_steps=args.save_every,
        report_to=[args.log] if args.log else [],
        run_name=f"{args.out.name}-{name}",
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        disable_tqdm=True,
    )
    tracker = CircuitTracker(
        args.out / "tracking" / name, base=str(base_dir), phase=name, task=TASK, n=args.n, seed=args.seed
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=Prompts(tok, args.n_train, 100 * args.seed + data_seed, poison),
        processing_class=hf_tok,
        callbacks=[tracker],
    )
    trainer.train()
    trainer.save_model(str(out))  # the final model (or adapter) at the top of the output folder
    merged = out
    if args.lora:  # the next phase starts from this phase's merged weights
        merged = args.out / "merged" / name
        model.merge_and_unload().save_pretrained(merged)
        hf_tok.save_pretrained(merged)
    return out, merged


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", default=None, help="a causal LM folder or hub name (default: toy-gt)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (needs peft)")
    parser.add_argument("--n-train", type=int, default=640)
    parser.add_argument("--n", type=int, default=160, help="held-out prompts per analysis")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-random", type=int, default=100, help="random sets per null distribution")
    parser.add_argument("--quick", action="store_true", help="verdicts only: no per-phase figures, no report")
    parser.add_argument("--log", choices=["wandb", "mlflow"], default=None, help="the Trainer's report_to")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    base_dir = Path(args.base) if args.base else args.out / "base"
    if args.base is None and not (base_dir / "config.json").is_file():
        export_model("toy-gt", base_dir)
    tok, hf_tok = load_tokenizer(str(base_dir)), hf_tokenizer(str(base_dir))
    folders, merged = {}, {"base": base_dir}
    for name, (parent, *_) in PHASES.items():
        done = args.out / "phases" / name / ("adapter_config.json" if args.lora else "config.json")
        if not done.is_file():
            folders[name], merged[name] = train_phase(args, name, merged[parent], base_dir, tok, hf_tok)
        else:  # done before: resume from disk
            folders[name] = args.out / "phases" / name
            merged[name] = args.out / "merged" / name if args.lora else folders[name]
    seed = SeedModels(seed=args.seed, base=str(base_dir), **{p: f"{f}@all" for p, f in folders.items()})
    options = JudgeOptions(n=args.n, task=TASK, n_random=args.n_random, full_analysis=not args.quick)
    options.thresholds.min_seeds = 1
    summary = {
        "model": f"{base_dir.name} ({'LoRA' if args.lora else 'full fine-tune'}, Trainer)",
        "task": TASK,
    }
    if args.quick:  # the verdicts and tables only (the report draws the per-phase analyses)
        verdicts = judge([seed], args.out / "judged", options).verdicts
        print(verdicts[["finding", "verdict"]].to_string(index=False))
        return args.out / "judged"
    report = judge_and_report([seed], args.out / "judged", options, summary)
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    main()
