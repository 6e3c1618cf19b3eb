"""Loading from the Hugging Face hub without hanging when it is out of reach.

Order: the local cache first (works offline); the network only if the hub answers within two
seconds; otherwise one clear error that says what is missing and how to get it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TypeVar

from circuit_plasticity.errors import UserError

T = TypeVar("T")
HUB_HOST = "huggingface.co"


def hub_reachable(timeout_s: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_load(name: str, load: Callable[[bool], T], what: str = "model") -> T:
    """Call `load(local_only)` from the cache, then from the hub, else raise a UserError."""
    try:
        return load(True)
    except UserError:
        raise  # the model was found and is unusable: trying the hub would not help
    except Exception as cached_error:  # noqa: BLE001 - any cache miss means: try the hub
        cache_reason = f"{type(cached_error).__name__}"
    if not hub_reachable():
        raise UserError(
            f"{what} {name!r} is not in the local Hugging Face cache and the hub is unreachable "
            f"(cache lookup: {cache_reason}). On a machine with internet run "
            f'`python -c "from transformers import AutoModelForCausalLM, AutoTokenizer; '
            f"AutoTokenizer.from_pretrained('{name}'); AutoModelForCausalLM.from_pretrained('{name}')\"` "
            f"(or `hf download {name}`), then copy ~/.cache/huggingface here or set HF_HOME; "
            f"or pass a local model directory. Offline, use the embedded model: toy-ioi."
        )
    try:
        return load(False)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001
        raise UserError(f"could not load {what} {name!r} from the hub: {error}") from error
