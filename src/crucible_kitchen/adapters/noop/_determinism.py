"""Deterministic pseudo-randomness and digests, and the noop "model" built on them.

Python's ``hash`` is salted per process, so nothing here uses it: every value is a pure
function of its inputs, identical across processes and platforms.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Final

import msgspec

_MASK: Final = (1 << 64) - 1
_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def mix(*parts: int) -> int:
    """A well-mixed 64-bit integer determined by ``parts``."""
    state = 0x243F6A8885A308D3
    for part in parts:
        state = _splitmix64(state ^ (part & _MASK))
    return state


def unit(*parts: int) -> float:
    """A float in [0, 1) determined by ``parts``."""
    return mix(*parts) / 2.0**64


def text_key(text: str) -> int:
    """A 64-bit integer determined by ``text``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def stable_digest(value: object) -> bytes:
    """A 16-byte digest of ``value``'s deterministic msgpack encoding.

    Raises:
        TypeError: msgspec cannot encode ``value``.
    """
    return hashlib.blake2b(_ENCODER.encode(value), digest_size=16).digest()


def fold(digest: str, *parts: bytes | str) -> str:
    """Extend a hex digest chain with ``parts``: order and content both matter."""
    hasher = hashlib.blake2b(bytes.fromhex(digest), digest_size=16)
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\x00")
    return hasher.hexdigest()


def initial_weights_digest(seed: int) -> str:
    """The weights digest of a fresh noop model built from ``seed``."""
    return fold("", "noop-weights", str(seed))


def digest_key(digest: str) -> int:
    """A 64-bit integer determined by a hex digest."""
    return int(digest[:16] or "0", 16)


@functools.lru_cache(maxsize=1 << 16)
def _token_hash(seed: int, position: int, token: int) -> int:
    return mix(seed, position, token)


def token_logprob(seed: int, weights_key: int, step: int, position: int, token: int) -> float:
    """The noop model's logprob of ``token`` predicted at ``position``.

    Its magnitude shrinks as ``step`` (optimizer steps applied) grows, so losses fall during
    training; the weights key adds a small dependence on the whole training history.
    """
    token_hash = _token_hash(seed, position, token)
    base = 0.05 + 2.0 * (token_hash / 2.0**64)
    jitter = 1.0 + 0.02 * (_splitmix64(token_hash ^ weights_key) / 2.0**64)
    return -base * jitter / (1.0 + 0.25 * step)
