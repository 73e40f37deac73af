"""One blob-key rule, applied the same way by every blob store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.adapters.filesystem import FilesystemBlobStore
from crucible_kitchen.adapters.noop import NoopBlobStore
from crucible_kitchen.errors import InvalidRequest
from crucible_kitchen.ports import RESERVED_KEY_PREFIX, BlobStore, check_blob_key

if TYPE_CHECKING:
    from pathlib import Path

BAD_KEYS = {
    "": "must be a non-empty string",
    "/etc/passwd": "must be relative",
    "a\\b": "must not contain a backslash or NUL",
    "a\x00b": "must not contain a backslash or NUL",
    "../up": "must not have empty, '.' or '..' segments",
    "a/../b": "must not have empty, '.' or '..' segments",
    "a//b": "must not have empty, '.' or '..' segments",
    "./a": "must not have empty, '.' or '..' segments",
    "a/": "must not have empty, '.' or '..' segments",
    f"a/{RESERVED_KEY_PREFIX}b": "must not have a segment starting with the reserved '.ck-tmp-'",
}
GOOD_KEYS = ("a", "runs/r1/ckpt/0001.bin", ".hidden/x", "a.ck-tmp-b", "..a/b..", "ünï/cödé")


@pytest.mark.parametrize(("key", "problem"), BAD_KEYS.items())
def test_the_rule_names_the_key_and_what_it_breaks(key: str, problem: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_blob_key(key, operation="write")
    assert str(raised.value) == f"write: blob key {key!r} {problem}"
    assert (raised.value.port, raised.value.operation) == ("blob_store", "write")


def test_a_key_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="read: blob key 3 must be a non-empty string"):
        check_blob_key(3, operation="read")


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_valid_keys_pass_unchanged(key: str) -> None:
    assert check_blob_key(key, operation="read") == key


def _stores(tmp_path: Path) -> list[BlobStore]:
    return [NoopBlobStore(), FilesystemBlobStore(tmp_path / "store")]


@pytest.mark.anyio
async def test_every_store_refuses_the_same_keys_with_the_same_error(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        for key in BAD_KEYS:
            for operation, call in (
                ("write", lambda: store.write(key, b"x", request_id="w")),  # noqa: B023
                ("read", lambda: store.read(key)),  # noqa: B023
                ("exists", lambda: store.exists(key)),  # noqa: B023
                ("delete", lambda: store.delete(key, request_id="d")),  # noqa: B023
            ):
                with pytest.raises(InvalidRequest) as raised:
                    await call()
                expected = f"{operation}: blob key {key!r} {BAD_KEYS[key]}"
                assert str(raised.value) == expected, type(store).__name__


@pytest.mark.anyio
async def test_every_store_accepts_the_same_keys(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        for number, key in enumerate(GOOD_KEYS):
            await store.write(key, key.encode(), request_id=f"w{number}")
            assert await store.read(key) == key.encode()
        assert await store.list_keys() == sorted(GOOD_KEYS), type(store).__name__
