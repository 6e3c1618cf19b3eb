"""`circuit-plasticity check DIR`: every file of a run, sweep or judge directory checked
against what was recorded when it was written (checkpoints' and analyses' sha256 hashes), and
every table, JSON file and safetensors file for its format. It reads only; the command that
wrote the directory, run again, names and recomputes what is found here."""

from __future__ import annotations

import json
from pathlib import Path

from circuit_plasticity.fileio import COMPLETE, completion_problem
from circuit_plasticity.training.checkpoint import META, checkpoint_problem


def _format_problem(path: Path) -> str | None:
    """A file that does not parse as what its name says (None: it does)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.ParquetFile(path).metadata  # noqa: B018 (reads the footer: a cut file fails)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                list(handle.keys())
        else:
            return None
    except Exception as error:  # noqa: BLE001 (any failure to parse is the finding)
        return f"{path} is not a readable {path.suffix[1:]} file ({type(error).__name__})"
    return None


def check_directory(root: str | Path) -> tuple[int, list[str]]:
    """(files checked, one line per problem) for everything under `root` except dot-names
    (the lock file, a writer's temporary folders)."""
    root = Path(root)
    checked, problems = 0, []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_dir():
            problem = None
            if (path / META).is_file():
                problem = checkpoint_problem(path)
            elif (path / COMPLETE).is_file():
                problem = completion_problem(path)
            final = path / "final.json"
            if problem is None and final.is_file():
                try:
                    named = path / json.loads(final.read_text())["checkpoint"]
                except (OSError, ValueError, KeyError, TypeError):
                    named = None
                if named is None or not (named / META).is_file():
                    problem = f"{final} names a checkpoint that is not there"
            if problem is not None:
                problems.append(problem)
        elif path.is_file():
            checked += 1
            problem = _format_problem(path)
            if problem is not None and not any(problem.startswith(str(path)) for problem in problems):
                problems.append(problem)
    return checked, problems
