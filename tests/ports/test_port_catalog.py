"""The port catalogue, the structural adapter check, and what ports may import."""

from __future__ import annotations

import ast
import importlib
import pathlib
from typing import Protocol

import pytest

import crucible_kitchen.ports as ports
from crucible_kitchen.errors import PortError
from crucible_kitchen.ports import PORT_PROTOCOLS, check_adapter, protocol_problems

PORTS_DIR = pathlib.Path(ports.__file__).parent


def test_every_port_protocol_is_exported_under_its_name() -> None:
    """A port is named after its Protocol, with a role in front where two share one."""
    for port_name, protocol in PORT_PROTOCOLS.items():
        assert getattr(ports, protocol.__name__) is protocol
        assert Protocol in protocol.__mro__, port_name
        assert "".join(word.title() for word in port_name.split("_")).endswith(protocol.__name__)
    assert PORT_PROTOCOLS["teacher_sampling_client"] is PORT_PROTOCOLS["sampling_client"]


def test_exports_are_a_tuple_of_every_private_modules_exports() -> None:
    """All but the names shared with the Kitchen and the conformance checks, not public."""
    assert isinstance(ports.__all__, tuple)
    assert len(set(ports.__all__)) == len(ports.__all__)
    private = {
        name
        for path in PORTS_DIR.glob("_*.py")
        if path.name != "__init__.py"
        for name in importlib.import_module(f"crucible_kitchen.ports.{path.stem}").__all__
    }
    assert set(ports.__all__) == private - {"protocol_problems"}
    assert ports.protocol_problems is not None
    for name in ports.__all__:
        assert getattr(ports, name) is not None, name


def _is_function_shape(node: ast.ClassDef) -> bool:
    """A Protocol with only ``__call__``: the type of a capability's value, not a port."""
    methods = [n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    return methods == ["__call__"]


def test_each_port_module_defines_exactly_one_protocol() -> None:
    for path in sorted(PORTS_DIR.glob("_*.py")):
        if path.name in ("__init__.py", "_types.py", "_catalog.py"):
            continue
        tree = ast.parse(path.read_text())
        protocols = [
            node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef)
            and any(ast.unparse(base).startswith("Protocol") for base in node.bases)
            and not _is_function_shape(node)
        ]
        assert len(protocols) == 1, (path.name, protocols)


@pytest.mark.parametrize("path", sorted(PORTS_DIR.glob("*.py")), ids=lambda path: path.name)
def test_ports_import_neither_runtime_nor_adapters_nor_torch(path: pathlib.Path) -> None:
    forbidden = ("crucible_kitchen.supervisors", "crucible_kitchen.adapters", "torch", "numpy")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            assert not module.startswith(forbidden), f"{path.name} imports {module}"


class _Complete:
    async def read(self, key: str) -> bytes:
        return b""

    async def write(self, key: str, data: bytes, *, request_id: str) -> ports.BlobInfo:
        return ports.BlobInfo(key=key, size=0, sha256="")

    async def exists(self, key: str) -> bool:
        return False

    async def delete(self, key: str, *, request_id: str) -> bool:
        return False

    async def list_keys(self, prefix: str = "") -> list[str]:
        return []


class _Broken:
    def read(self, key: str) -> bytes:  # sync, where the port's is async
        return b""

    async def write(self, key: str, data: bytes) -> None:  # no request_id
        return None

    async def exists(self, key: str) -> bool:
        return False

    async def delete(self, key: str, *, request_id: str) -> bool:
        return False

    list_keys = "not a method"


def test_check_adapter_accepts_a_complete_adapter() -> None:
    check_adapter("blob_store", _Complete())
    assert protocol_problems(ports.BlobStore, _Complete()) == []


def test_check_adapter_lists_every_problem() -> None:
    with pytest.raises(PortError) as raised:
        check_adapter("blob_store", _Broken())
    assert raised.value.port == "blob_store"
    assert raised.value.problems == [
        "'read' must be an async method",
        "'write' lacks parameter 'request_id'",
        "'list_keys' is not a method",
    ]
    assert "_Broken does not implement port 'blob_store'" in str(raised.value)


def test_check_adapter_reports_missing_members_and_unknown_ports() -> None:
    with pytest.raises(PortError, match="missing 'sample'"):
        check_adapter("sampling_client", object())
    with pytest.raises(PortError, match="unknown port 'gpu'"):
        check_adapter("gpu", object())  # type: ignore[arg-type]


def test_a_keyword_catch_all_accepts_any_parameter() -> None:
    class Flexible(_Complete):
        async def write(self, key: str, data: bytes, **options: object) -> ports.BlobInfo:
            return ports.BlobInfo(key=key, size=0, sha256="")

    check_adapter("blob_store", Flexible())
