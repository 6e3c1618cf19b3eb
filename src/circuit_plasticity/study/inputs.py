"""What `judge` was given, recorded in its output directory (`judge.json`).

Every cached analysis under `seeds/` was made from certain models with certain options; a
rerun into the same directory with a changed checkpoint or option would otherwise reuse
analyses of the old ones and report them as the new. The record holds, per seed and phase,
the model's path and a SHA-256 of its weights, and the options; a rerun is compared with it
before any work: the same inputs resume, other inputs are refused, or (`redo=True`) the
outputs that depend on what changed are deleted and made again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from circuit_plasticity.errors import UserError
from circuit_plasticity.fileio import portable_path, write_json

RECORD = "judge.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SKIP_FILES = ("train_state.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def weights_digest(model: Any) -> str:
    """SHA-256 of a model's weights: its weight files for a directory or an embedded toy, its
    parameters for a loaded model or a hub name."""
    from circuit_plasticity.models.load import TOY_NAMES, LoadedModel

    if isinstance(model, LoadedModel):
        return _tensor_digest(model.model.state_dict())
    text = str(model)
    if text in TOY_NAMES:
        from circuit_plasticity.models.toy import TOY_DIRS

        return _file_digest(TOY_DIRS[text])
    if Path(text).is_dir():
        return _file_digest(Path(text))
    from circuit_plasticity.models.load import load_model

    return _tensor_digest(load_model(text).model.state_dict())


def _file_digest(directory: Path) -> str:
    files = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and p.name not in SKIP_FILES
    )
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    # an adapter folder's weights mean nothing without its base: hash the base it names too
    adapter = directory / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path", "")
        h.update(f"base:{base}".encode())
    return h.hexdigest()


def _tensor_digest(state: dict) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_record(seeds, options, out: Path) -> dict:
    """The inputs of one judgement: every model (path, weights digest) and the options."""
    from circuit_plasticity.study.judge import describe_model

    models = {}
    for s in seeds:
        entry = {}
        for phase, model in s.phases().items():
            where = describe_model(model)
            if isinstance(model, str | Path) and Path(model).exists():
                where = portable_path(str(model), out)
            entry[phase] = {"model": where, "sha256": weights_digest(model)}
        models[str(s.seed)] = entry
    return {"models": models, "options": json.loads(json.dumps(dataclasses.asdict(options), default=str))}


def changes(saved: dict, mine: dict) -> tuple[list[str], dict[str, set[str]]]:
    """(option names that differ, seed -> phases whose weights differ or are new or gone). An
    option the saved record lacks (added since) counts as its default."""
    from circuit_plasticity.study.judge import JudgeOptions

    defaults = json.loads(json.dumps(dataclasses.asdict(JudgeOptions()), default=str))
    before = {**defaults, **saved.get("options", {})}
    options = sorted(k for k in set(before) | set(mine["options"]) if before.get(k) != mine["options"].get(k))
    phases: dict[str, set[str]] = {}
    old, new = saved.get("models", {}), mine["models"]
    for seed in set(old) | set(new):
        a, b = old.get(seed, {}), new.get(seed, {})
        diff = {p for p in set(a) | set(b) if a.get(p, {}).get("sha256") != b.get(p, {}).get("sha256")}
        if diff:
            phases[seed] = diff
    return options, phases


def check_inputs(seeds, options, out: str | Path, redo: bool = False) -> None:
    """Compare this judgement's inputs with those recorded in `out`; refuse a mismatch (or, with
    `redo`, delete what depends on it); write the record. Raises UserError before any work."""
    out = Path(out)
    path = out / RECORD
    mine = make_record(seeds, options, out)
    if path.is_file():
        saved = json.loads(path.read_text())
        options_changed, models_changed = changes(saved, mine)
        if options_changed or models_changed:
            if not redo:
                raise UserError(
                    f"{out} was judged with other inputs: "
                    f"{_explain(saved, mine, options_changed, models_changed)}; "
                    "use another --out, or --redo to redo what changed"
                )
            _forget(out, options_changed, models_changed)
    elif _has_analyses(out) and not (out / "experiment.json").is_file() and not redo:
        raise UserError(
            f"{out} holds analyses of models it has no record of ({RECORD} is missing): "
            "use another --out, or --redo to judge again from scratch"
        )
    elif redo and _has_analyses(out) and not (out / "experiment.json").is_file():
        _forget(out, ["record"], {})
    write_json(path, mine)


def _has_analyses(out: Path) -> bool:
    """Cached judge outputs (a study's training runs alone are not)."""
    return any(out.glob("seeds/seed-*/analysis")) or any(out.glob("seeds/seed-*/compare"))


def _explain(saved: dict, mine: dict, options: list[str], models: dict[str, set[str]]) -> str:
    parts = []
    for seed in sorted(models):
        for phase in sorted(models[seed]):
            was = saved.get("models", {}).get(seed, {}).get(phase, {}).get("model", "nothing")
            now = mine["models"].get(seed, {}).get(phase, {}).get("model", "nothing")
            same_path = " (same path, other weights)" if was == now else ""
            parts.append(f"seed {seed} {phase} was {was}, now {now}{same_path}")
    parts += [
        f"option {k} was {saved.get('options', {}).get(k)!r}, now {mine['options'].get(k)!r}" for k in options
    ]
    return "; ".join(parts)


def _forget(out: Path, options: list[str], models: dict[str, set[str]]) -> None:
    """Delete the cached outputs made from what changed (never a study's training runs)."""
    derived = ("compare", "repair", "repair-random")
    targets = []
    for seed_dir in sorted((out / "seeds").glob("seed-*")):
        phases = models.get(seed_dir.name.removeprefix("seed-"), set())
        if options or "base" in phases:  # the prompts, the base circuit: everything of the seed
            targets += [seed_dir / "analysis", *(seed_dir / d for d in derived)]
        elif phases:
            targets += [*(seed_dir / "analysis" / p for p in phases), *(seed_dir / d for d in derived)]
    for target in [*targets, out / "tables"]:
        if target.is_dir():
            shutil.rmtree(target)
