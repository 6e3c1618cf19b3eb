"""Every file the package writes goes through here, atomically: complete or absent, never
half-written. JSON, text, and tables (Parquet, with an optional CSV twin)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from circuit_plasticity.components import component_name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give the usual permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[str]], Any]) -> None:
    """Write a text file through `write(handle)`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        write(handle)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_atomic(path, lambda h: json.dump(obj, h, indent=2, sort_keys=True))


def write_table(path: str | os.PathLike[str], frame: Any, csv: bool = False) -> Path:
    """A DataFrame as Parquet at `path` (and as CSV beside it with `csv`), atomically. A table
    of per-component rows (`layer` and `head` columns) gets the component's one name first."""
    path = Path(path)
    frame = with_component_names(frame)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    if csv:
        with atomic_path(path.with_suffix(".csv")) as tmp:
            frame.to_csv(tmp, index=False)
    return path


def with_component_names(frame: Any) -> Any:
    """`frame` with a first column `component` (each row's one name) when its rows are
    components (`layer` and `head` columns, none missing) and it has none yet; else as is."""
    if not {"layer", "head"} <= set(frame.columns) or "component" in frame.columns or not len(frame):
        return frame
    keys = frame[["layer", "head"]]
    if keys.isna().any().any():
        return frame
    frame = frame.copy()
    frame.insert(0, "component", [component_name((int(a), int(b))) for a, b in keys.itertuples(index=False)])
    return frame


STUDY_MARKER = "experiment.json"


def portable_path(value: str, where: str | os.PathLike[str]) -> str:
    """`value` as a file in directory `where` should store it. A local path to something inside
    the same study directory (the nearest ancestor of `where` holding experiment.json) becomes
    relative to `where` ('./...' or '../...'), so a moved or shared study still resolves; any
    other local path becomes absolute (so that only the relative form starts with ./ or ../);
    a name that is no local path (a hub name, toy-ioi) is stored as given."""
    target = Path(value)
    if not target.exists():
        return value
    target, where = target.resolve(), Path(where).resolve()
    root = next((d for d in (where, *where.parents) if (d / STUDY_MARKER).is_file()), None)
    if root is None or not target.is_relative_to(root):
        return str(target)
    relative = os.path.relpath(target, where)
    return relative if relative == ".." or relative.startswith("../") else f"./{relative}"


def resolve_path(value: str, where: str | os.PathLike[str]) -> str:
    """The inverse of `portable_path`: './...' and '../...' are read against `where`."""
    if value.startswith(("./", "../")):
        return os.path.normpath(Path(where).resolve() / value)
    return value


def unique_suffix() -> str:
    """A name part no other process (or earlier run) uses: pid and a random part, so two
    writers never share a temporary file or folder."""
    import secrets

    return f"{os.getpid()}-{secrets.token_hex(4)}"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's content hash (hex): what a completion marker records, so a file damaged or
    swapped after it was written is found on resume and by `check`."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(directory: str | os.PathLike[str], skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file directly in `directory` (names in `skip` and dot-files left out)."""
    root = Path(directory)
    return {
        p.name: sha256_file(p)
        for p in sorted(root.iterdir())
        if p.is_file() and p.name not in skip and not p.name.startswith(".")
    }


def hash_problem(directory: str | os.PathLike[str], recorded: dict[str, str]) -> str | None:
    """What is wrong with `directory` against the hashes its marker `recorded` (None: all whole)."""
    root = Path(directory)
    for name, digest in sorted(recorded.items()):
        path = root / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != digest:
            return f"{path} is damaged (its content differs from the hash recorded when it was written)"
    return None


def warn(message: str) -> None:
    """One line on stderr: a damaged or missing file found, and what is done about it."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_table_or_none(path: str | os.PathLike[str]) -> Any:
    """The Parquet table at `path`, or None when it is absent or not a readable table (then
    named in one warning line): the caller makes it again instead of failing on it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        warn(f"{path} is not a readable table ({type(error).__name__}); making it again")
        return None


COMPLETE = "complete.json"  # a directory's completion marker: the sha256 of each file in it


def mark_complete(directory: str | os.PathLike[str]) -> None:
    """Write `directory`'s completion marker, last: every file in it, with its content hash."""
    write_json(Path(directory) / COMPLETE, {"files": file_hashes(directory, skip=(COMPLETE,))})


def completion_problem(directory: str | os.PathLike[str]) -> str | None:
    """What is wrong with a marked directory (None: whole, or written before markers existed)."""
    marker = Path(directory) / COMPLETE
    if not marker.is_file():
        return None
    try:
        recorded = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{marker} is not readable"
    return hash_problem(directory, recorded)
