"""Where a judged directory's numbers came from: the spec with every hyperparameter, the models
judged (path and content hash), the package version and git commit, the date, the machine and
the wall time. Written once per invocation as provenance.json; the report shows it."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from circuit_plasticity.fileio import portable_path, write_json

FILE = "provenance.json"


def model_hash(model: Any) -> str:
    """sha256 over a model directory's files (names and bytes, in name order), or of the
    embedded toy's; a hub name is hashed from its cached weights when present. "" if none."""
    from circuit_plasticity.models.load import TOY_NAMES

    if not isinstance(model, str | os.PathLike):
        return ""
    name = str(model)
    if name in TOY_NAMES:
        from circuit_plasticity.models.toy import TOY_DIRS

        path = Path(TOY_DIRS[name])
    else:
        path = Path(name)
    if not path.is_dir():
        path = _cached_hub_dir(name)
        if path is None:
            return ""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _cached_hub_dir(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for weights in ("model.safetensors", "model.safetensors.index.json"):
        found = try_to_load_from_cache(name, weights)
        if isinstance(found, str):
            return Path(found).parent
    return None


def git_commit() -> str:
    """The commit of the checkout this package runs from (with "+ changes" when the tracked
    files differ from it), or "" for an installed package."""
    import circuit_plasticity

    root = Path(circuit_plasticity.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def machine(processes: int | None = None) -> dict[str, Any]:
    import torch

    from circuit_plasticity.models.load import default_device

    device = default_device()
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    info = {
        "device": device,
        "torch threads": torch.get_num_threads(),
        "cpu cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if processes is not None:
        info["processes"] = processes
        if processes > 1:  # the study's worker processes run one thread each
            info["torch threads"] = f"1 per worker process ({info['torch threads']} in the main one)"
    return info


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("circuit-plasticity")
    except PackageNotFoundError:
        return "unknown"


def write_provenance(
    out: str | Path,
    *,
    command: str,
    spec: dict[str, Any],
    seeds: list,
    started: datetime,
    resumed: bool,
    processes: int | None = None,
) -> dict[str, Any]:
    """out/provenance.json for this invocation; `seeds` are `study.judge.SeedModels`."""
    out = Path(out)
    finished = datetime.now(UTC)
    models = []
    for s in seeds:
        for phase, model in s.phases().items():
            shown = portable_path(str(model), out) if isinstance(model, str | os.PathLike) else _name(model)
            models.append({"seed": s.seed, "phase": phase, "model": shown, "sha256": model_hash(model)})
    this = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "wall_seconds": round((finished - started).total_seconds(), 1),
        "resumed": resumed,
    }
    earlier = _earlier_invocations(out / FILE) if resumed else []
    invocations = [*earlier, this]
    record = {
        **this,
        "spec": spec,
        "models": models,
        "version": package_version(),
        "commit": git_commit(),
        "started": invocations[0]["started"],
        "wall_seconds": round(sum(i["wall_seconds"] for i in invocations), 1),
        "invocations": invocations,
        "machine": machine(processes),
    }
    write_json(out / FILE, record)
    return record


def _earlier_invocations(path: Path) -> list[dict[str, Any]]:
    """The invocations an earlier provenance.json recorded (a resumed run adds itself)."""
    import json

    if not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    keys = ("command", "started", "finished", "wall_seconds", "resumed")
    return earlier.get("invocations") or [{k: earlier.get(k) for k in keys}]


def _name(model: Any) -> str:
    return str(getattr(model, "name", type(model).__name__))


def now() -> datetime:
    return datetime.now(UTC)
