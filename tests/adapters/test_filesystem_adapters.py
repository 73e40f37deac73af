"""The filesystem adapters: conformance, row validation naming file/line/field, Parquet,
blob keys confined to the root, atomic writes, a persistent registry."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crucible_kitchen._files import TEMP_PREFIX
from crucible_kitchen.adapters.filesystem import (
    FilesystemBlobStore,
    FilesystemDatasetStore,
    FilesystemModelRegistry,
    bundled_data_dir,
    filesystem_adapters,
)
from crucible_kitchen.errors import (
    DataError,
    InvalidRequest,
    PermanentBackendError,
    RequestIdConflict,
    ResourceNotFound,
)
from crucible_kitchen.ports import ModelArtifact, check_adapter
from crucible_kitchen.testing import check_blob_store, check_dataset_store, check_model_registry
from crucible_kitchen.training import load_chat_examples

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# Dataset store


async def test_importing_the_filesystem_adapters_imports_neither_torch_nor_pyarrow() -> None:
    code = (
        "import sys, crucible_kitchen.adapters.filesystem\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pyarrow')]\n"
        "assert not heavy, heavy\n"
    )
    result = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert result.returncode == 0, result.stderr.decode()


async def test_the_bundled_chat_tasks_load_through_the_store() -> None:
    store = FilesystemDatasetStore(bundled_data_dir())
    await check_dataset_store(lambda: store, dataset="chat_tasks")
    info = await store.describe("chat_tasks")
    examples = load_chat_examples()
    assert info.splits == {"train": len(examples)}
    assert info.columns == ("messages", "task")
    rows = await store.read_rows("chat_tasks", indices=[0, len(examples) - 1])
    for row, example in zip(rows, (examples[0], examples[-1]), strict=True):
        assert row["task"] == example.task
        assert [(m["role"], m["content"]) for m in row["messages"]] == [
            (m.role, m.content) for m in example.messages
        ]
    for name in ("arithmetic_rl", "preference_tasks"):
        assert (await store.describe(name)).splits["train"] > 0


async def test_a_directory_dataset_has_one_split_per_file(tmp_path: Path) -> None:
    _jsonl(tmp_path / "qa" / "train.jsonl", [{"prompt": "1+1", "completion": "2"}] * 3)
    _jsonl(
        tmp_path / "qa" / "test.jsonl", [{"prompt": [CHAT_ROW["messages"][0]], "completion": "x"}]
    )
    _jsonl(tmp_path / "nested" / "deep" / "set.jsonl", ["", json.dumps(CHAT_ROW), "  "])
    store = FilesystemDatasetStore(tmp_path)
    await check_dataset_store(lambda: store, dataset="qa")
    await check_dataset_store(lambda: store, dataset="nested/deep/set")
    info = await store.describe("qa")
    assert info.splits == {"test": 1, "train": 3}
    assert info.columns == ("completion", "prompt")
    assert (await store.describe("nested/deep/set")).splits == {"train": 1}  # blank lines skipped


async def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [CHAT_ROW])
    store = FilesystemDatasetStore(tmp_path)
    assert (await store.describe("d")).splits == {"train": 1}
    _jsonl(path, [CHAT_ROW, CHAT_ROW])
    os.utime(path, ns=(0, 10**18))
    assert (await store.describe("d")).splits == {"train": 2}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"messages": [', json.dumps(CHAT_ROW)], r"line 1 \(row 0\): not valid JSON"),
        ([json.dumps(CHAT_ROW), "", "[1, 2]"], r"line 3 \(row 1\): a row must be a JSON object"),
        (
            [
                json.dumps(
                    {"messages": [{"role": "user", "content": "a"}, {"role": "x", "content": 3}]}
                )
            ],
            r"line 1 \(row 0\): field 'messages\[1\]\.content': expected a string, got int",
        ),
        (
            [json.dumps(CHAT_ROW), json.dumps({"messages": [{"content": "no role"}]})],
            r"line 2 \(row 1\): field 'messages\[0\]\.role' is missing",
        ),
        ([json.dumps({"messages": []})], r"field 'messages': the list of messages is empty"),
        ([json.dumps({"messages": "hi"})], r"field 'messages': expected a list of messages"),
        (
            [json.dumps({"prompt": 3, "completion": "x"})],
            r"field 'prompt': expected a string or messages, got int",
        ),
        (
            [json.dumps({"prompt": "p", "completion": [{"role": "", "content": "x"}]})],
            r"field 'completion\[0\]\.role': expected a non-empty string, got ''",
        ),
        ([json.dumps({"chosen": ["x"]})], r"field 'chosen\[0\]': a message must be an object"),
    ],
)
async def test_malformed_rows_raise_data_errors_naming_file_row_and_field(
    tmp_path: Path, lines: list[str], expected: str
) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", lines)
    store = FilesystemDatasetStore(tmp_path)
    for call in (lambda: store.describe("bad"), lambda: store.read_rows("bad", indices=[0])):
        with pytest.raises(DataError, match=expected) as caught:
            await call()
        assert str(path) in str(caught.value)


async def test_bad_dataset_names_and_requests(tmp_path: Path) -> None:
    _jsonl(tmp_path / "both.jsonl", [CHAT_ROW])
    _jsonl(tmp_path / "both" / "train.jsonl", [CHAT_ROW])
    _jsonl(tmp_path / "ok.jsonl", [CHAT_ROW])
    outside = _jsonl(tmp_path.parent / f"{tmp_path.name}-outside" / "secret.jsonl", [CHAT_ROW])
    (tmp_path / "link").symlink_to(outside.parent, target_is_directory=True)
    store = FilesystemDatasetStore(tmp_path)
    with pytest.raises(InvalidRequest, match="ambiguous"):
        await store.describe("both")
    for name in ("../x", "/etc/passwd", "a//b", "link/secret"):
        with pytest.raises(InvalidRequest):
            await store.describe(name)
    with pytest.raises(ResourceNotFound, match="no dataset 'missing'"):
        await store.read_rows("missing")
    with pytest.raises(ResourceNotFound, match="no split 'test'; splits: train"):
        await store.read_rows("ok", split="test")
    for bad_index in (-1, 1, True, 0.0):
        with pytest.raises(InvalidRequest, match="out of range"):
            await store.read_rows("ok", indices=[bad_index])  # type: ignore[list-item]
    with pytest.raises(ResourceNotFound):
        FilesystemDatasetStore(tmp_path / "nowhere")


async def test_parquet_files_need_pyarrow_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "p.parquet").write_bytes(b"PAR1 not really")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    store = FilesystemDatasetStore(tmp_path)
    with pytest.raises(PermanentBackendError, match=r"needs pyarrow \(pip install pyarrow\)"):
        await store.describe("p")


async def test_parquet_datasets_read_like_jsonl(tmp_path: Path) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    rows = [{"messages": CHAT_ROW["messages"], "score": i / 2} for i in range(5)]
    (tmp_path / "chat").mkdir()
    parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "chat" / "train.parquet")
    parquet.write_table(
        pyarrow.Table.from_pylist([{"messages": [{"role": "user", "content": 1}]}]),
        tmp_path / "broken.parquet",
    )
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    store = FilesystemDatasetStore(tmp_path)
    await check_dataset_store(lambda: store, dataset="chat")
    assert await store.read_rows("chat", indices=[4]) == [rows[4]]
    with pytest.raises(DataError, match=r"broken\.parquet, row 0: field 'messages\[0\]\.content'"):
        await store.describe("broken")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        await store.describe("garbage")


# ------------------------------------------------------------------------------------------
# Blob store


async def test_blob_store_passes_the_conformance_checks(tmp_path: Path) -> None:
    roots = iter(range(100))
    await check_blob_store(lambda: FilesystemBlobStore(tmp_path / f"store-{next(roots)}"))


async def test_blob_keys_that_escape_the_root_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"secret")
    store = FilesystemBlobStore(root)
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "leak.bin").symlink_to(outside / "secret.bin")
    (root / "inside.bin").write_bytes(b"in")
    (root / "alias.bin").symlink_to(root / "inside.bin")
    for key in ("out/secret.bin", "out/new.bin", "leak.bin"):
        with pytest.raises(InvalidRequest, match="leads outside the store's root"):
            await store.read(key)
        with pytest.raises(InvalidRequest, match="outside"):
            await store.write(key, b"x", request_id=f"w-{key}")
        with pytest.raises(InvalidRequest):
            await store.exists(key)
    for key in ("../outside/secret.bin", "/etc/passwd", f"{TEMP_PREFIX}x", "a\\..\\b"):
        with pytest.raises(InvalidRequest):
            await store.write(key, b"x", request_id=f"w-{key}")
    assert (outside / "secret.bin").read_bytes() == b"secret"
    assert not (outside / "new.bin").exists()
    assert await store.list_keys() == ["alias.bin", "inside.bin"]  # links inside are fine
    assert await store.read("alias.bin") == b"in"


async def test_blob_writes_are_atomic_and_leave_nothing_behind(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    await store.write("a/b/c.bin", b"1" * 1000, request_id="w1")
    await store.write("a/b/c.bin", b"2" * 10, request_id="w2")
    assert await store.read("a/b/c.bin") == b"2" * 10
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["c.bin"]
    (tmp_path / "a" / f"{TEMP_PREFIX}c.bin.123").write_bytes(b"half")  # a crashed write
    assert await store.list_keys() == ["a/b/c.bin"]
    with pytest.raises(InvalidRequest, match="prefix of other keys"):
        await store.write("a/b", b"x", request_id="w3")
    with pytest.raises(InvalidRequest, match="prefix of other keys"):
        await store.write("a/b/c.bin/d", b"x", request_id="w4")
    assert await store.delete("a/b/c.bin", request_id="d1")
    assert not (tmp_path / "a" / "b").exists()  # emptied directories are removed
    assert not await store.delete("a/b/c.bin", request_id="d2")
    with pytest.raises(RequestIdConflict):
        await store.delete("other", request_id="d1")


async def test_concurrent_resends_of_a_write_run_it_once(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    answers = []

    async def write() -> None:
        answers.append(await store.write("k", b"v", request_id="same"))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(write)
    assert len(answers) == 5
    assert all(answer is answers[0] for answer in answers)


# ------------------------------------------------------------------------------------------
# Model registry and bundle


async def test_model_registry_passes_the_conformance_checks(tmp_path: Path) -> None:
    roots = iter(range(100))
    await check_model_registry(lambda: FilesystemModelRegistry(tmp_path / f"reg-{next(roots)}"))


async def test_the_registry_persists_and_a_resent_register_survives_a_restart(
    tmp_path: Path,
) -> None:
    first = FilesystemModelRegistry(tmp_path)
    artifacts = [
        ModelArtifact(name="sl/model one", version=str(v), artifact_uri=f"file:///m/{v}")
        for v in range(3)
    ]
    models = [
        await first.register(artifact, request_id=f"r{i}") for i, artifact in enumerate(artifacts)
    ]
    assert all("/" not in model.model_id and " " not in model.model_id for model in models)
    restarted = FilesystemModelRegistry(tmp_path)
    assert await restarted.list_models() == models
    assert await restarted.register(artifacts[1], request_id="r1") == models[1]
    with pytest.raises(InvalidRequest, match="already registered"):
        await restarted.register(artifacts[1], request_id="another")
    for bad in ("../x", "", models[0].model_id + ".json"):
        with pytest.raises(ResourceNotFound):
            await restarted.get(bad)


async def test_filesystem_adapters_bundle(tmp_path: Path) -> None:
    adapters = filesystem_adapters(run_dir=tmp_path)
    assert set(adapters) == {"dataset_store", "blob_store", "model_registry"}
    for port, adapter in adapters.items():
        check_adapter(port, adapter)
    store = adapters["dataset_store"]
    assert isinstance(store, FilesystemDatasetStore)
    assert (await store.describe("chat_tasks")).splits["train"] == 560
    blobs = adapters["blob_store"]
    assert isinstance(blobs, FilesystemBlobStore)
    await blobs.write("x", b"1", request_id="x")
    assert (tmp_path / "blobs" / "x").read_bytes() == b"1"
