"""One model's runs on one batch, computed once and shared by every analysis that needs them:
the clean END logits, hook_z of a run, the per-group means of the counterfactual prompts, the
fast patching path's cached base run.

Inside `shared_runs()` each is computed on first use and reused for the same model and the
same tensors (by identity: a subset or a repeated batch is new data and is computed anew).
Outside it nothing is kept, so training, which changes the weights between calls, never sees
a stale value. `analyze_model` opens one."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
_STORE: ContextVar[dict | None] = ContextVar("shared_runs", default=None)


@contextlib.contextmanager
def shared_runs() -> Iterator[None]:
    """Share runs within the block; the model's weights must not change inside it."""
    if _STORE.get() is not None:  # already sharing: an inner block joins the outer one
        yield
        return
    token = _STORE.set({})
    try:
        yield
    finally:
        _STORE.reset(token)


def sharing_runs(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function whose whole body analyses fixed weights: it runs in `shared_runs`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with shared_runs():
            return fn(*args, **kwargs)

    return wrapper


def is_sharing() -> bool:
    """True inside `shared_runs`: training must not run here (its weights change)."""
    return _STORE.get() is not None


def forget(model: Any) -> None:
    """Drop what the open block holds for `model` (and with it the model itself): a model
    finished with inside a long block, such as the ungrouped twin EAP-IG runs on."""
    store = _STORE.get()
    if store is not None:
        for key in [k for k, v in store.items() if v[0] is model]:
            del store[key]


def reuse(kind: str, model: Any, inputs: tuple[Any, ...], make: Callable[[], T]) -> T:
    """`make()`, or the value it gave for this kind, model and inputs (a batch, tensors; by
    identity) inside `shared_runs`. The entry holds the model and inputs themselves, so their
    ids cannot be recycled while it lives."""
    store = _STORE.get()
    if store is None:
        return make()
    key = (kind, id(model), *map(id, inputs))
    hit = store.get(key)
    if hit is not None:
        return hit[-1]
    value = make()
    store[key] = (model, inputs, value)
    return value
