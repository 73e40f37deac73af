"""Seeds derived from a run's seed: one independent, reproducible stream per name."""

from __future__ import annotations

import hashlib

__all__ = ("derive_seed",)


def derive_seed(*parts: object) -> int:
    """A 64-bit seed (``0 <= seed < 2**64``) from any parts, stable across processes,
    platforms and Python versions.

    The parts are joined by ``":"`` after ``str()`` and hashed with BLAKE2b, so
    ``derive_seed(7, "init")`` names the ``"init"`` stream of seed 7, and any change of a part
    gives an unrelated seed. Every generator in the package (the stages' ``ctx.rng``, the
    local backend's weight init, dropout and sampling) is seeded this way, so the same seed
    gives the same run; ``torch.Generator.manual_seed`` takes the whole range.
    """
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
