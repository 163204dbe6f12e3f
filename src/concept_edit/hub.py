"""Whether the Hugging Face hub can be reached, asked once per process.

Offline, every hub lookup (a judge's weights, CLIP features, the I2P prompts, a model) retries for 20-45 s and
prints dozens of warnings before its one-line error. One quick connection attempt tells an offline machine
apart, and the lookups then read the local cache only and fail at once.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

CONNECT_TIMEOUT = 2.0  # seconds; the hub answers a TCP connect far faster from any usable network
OFFLINE_HINT = "the Hugging Face hub cannot be reached from here (set HF_HUB_OFFLINE=1 to skip the hub at once)"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> bool:
    """True under HF_HUB_OFFLINE, or when a TCP connection to the hub's endpoint fails within CONNECT_TIMEOUT.

    Behind a proxy (HTTPS_PROXY, ALL_PROXY) a direct connection says nothing: the clients are left to try.
    """
    if _truthy("HF_HUB_OFFLINE"):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError:
        return True
    return False


def cache_only() -> dict:
    """`from_pretrained` keyword arguments: read the local cache only when the hub cannot be reached (under
    HF_HUB_OFFLINE the clients do so themselves)."""
    return {"local_files_only": True} if hub_unreachable() and not _truthy("HF_HUB_OFFLINE") else {}


def offline_note() -> str:
    """A sentence for an error message: why the hub was not asked, when it was not."""
    return f"; {OFFLINE_HINT}" if hub_unreachable() and not _truthy("HF_HUB_OFFLINE") else ""


def first_line(err: BaseException) -> str:
    """An error's first line without its full stop, to be quoted inside a sentence."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__).rstrip(".")
