"""Checkpoints of weights and optimizer state: safetensors and JSON, never pickle.

A checkpoint is a directory::

    manifest.json             format, step, config and its hash, sha256 and size of each file,
                              the caller's JSON payload and its hash
    model.safetensors         every weight of the model (LoRA adapters included)
    train_state.safetensors   optional: AdamW moments and step counts per parameter name, and
                              the dropout RNG state
    train_state.json          optional: the optimizer's parameter groups

It is written all or nothing (``atomic_write_directory``): into a hidden staging directory
next to its final place (each file fsynced), then renamed into place and the parent directory
fsynced, so a reader sees either the complete checkpoint or nothing. A crash mid-write leaves
only a ``.<name>.*.partial`` directory (:func:`remove_partial_checkpoints` clears them away).
Loading checks every file's size and sha256, and the config, before changing anything;
:func:`verify_checkpoint` checks a whole checkpoint without loading it, and :func:`set_aside`
moves a damaged one out of the way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

from crucible_kitchen._files import PARTIAL_SUFFIX, atomic_write_directory, fsync_directory
from crucible_kitchen.adapters.local_torch._config import LoraConfig, ModelConfig, sha256_of_json
from crucible_kitchen.adapters.local_torch._fsdp import load_full_state
from crucible_kitchen.adapters.local_torch._lora import apply_lora, lora_layers
from crucible_kitchen.adapters.local_torch._model import build_model
from crucible_kitchen.errors import (
    CheckpointCorrupted,
    CheckpointExists,
    CheckpointMismatch,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crucible_kitchen.adapters.local_torch._model import Transformer

FORMAT = "crucible-kitchen/local-torch-checkpoint"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
TRAIN_STATE_TENSORS_FILE = "train_state.safetensors"
TRAIN_STATE_JSON_FILE = "train_state.json"

_OPTIMIZER_PREFIX = "optimizer/"
_DROPOUT_RNG_KEY = "rng/dropout"


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """Size in bytes and sha256 hex digest of one checkpoint file."""

    size: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class CheckpointManifest:
    """What ``manifest.json`` says about a checkpoint.

    Attributes:
        step: The training step the caller saved at.
        config: Identity of the model config and LoRA config (``{"model": ..., "lora": ...}``).
        config_hash: sha256 of ``config``.
        files: Every file of the checkpoint but the manifest.
        user_payload: The caller's JSON object, or ``None``.
    """

    step: int
    config: dict[str, Any]
    config_hash: str
    files: dict[str, FileRecord]
    user_payload: dict[str, Any] | None

    @property
    def has_train_state(self) -> bool:
        """Whether optimizer state was saved."""
        return TRAIN_STATE_TENSORS_FILE in self.files and TRAIN_STATE_JSON_FILE in self.files


def model_identity(model: Transformer) -> dict[str, Any]:
    """The config identity a checkpoint of ``model`` records and is checked against."""
    lora = None if model.lora_config is None else model.lora_config.identity()
    return {"model": model.config.identity(), "lora": lora}


def named_optimizer_state(model: Transformer, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` keyed by parameter name instead of index: ``{"state": {name:
    {key: value}}, "param_groups": [{..., "params": [name, ...]}]}`` (the form
    ``torch.distributed.checkpoint.state_dict`` gives for a sharded model's full state)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    state_dict = optimizer.state_dict()
    state: dict[str, dict[str, Any]] = {}
    groups: list[dict[str, Any]] = []
    for group, saved_group in zip(optimizer.param_groups, state_dict["param_groups"], strict=True):
        group_names: list[str] = []
        for parameter, index in zip(group["params"], saved_group["params"], strict=True):
            name = names.get(id(parameter))
            if name is None:
                raise ValueError("the optimizer holds a parameter that is not in the model")
            group_names.append(name)
            if index in state_dict["state"]:
                state[name] = state_dict["state"][index]
        groups.append({**saved_group, "params": group_names})
    return {"state": state, "param_groups": groups}


def _optimizer_payload(named_state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Name-keyed optimizer state (see :func:`named_optimizer_state`): tensors, and JSON for
    everything else."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    groups: list[dict[str, Any]] = []
    for saved_group in named_state["param_groups"]:
        for name in saved_group["params"]:
            for key, value in named_state["state"].get(name, {}).items():
                if isinstance(value, Tensor):
                    tensors[f"{_OPTIMIZER_PREFIX}{name}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(name, {})[key] = value
        others = {k: v for k, v in saved_group.items() if k != "params"}
        groups.append({**others, "params": saved_group["params"]})
    return tensors, {"param_groups": groups, "scalars": scalars}


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: Transformer,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    user_payload: dict[str, Any] | None = None,
    weights: Mapping[str, Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> CheckpointManifest:
    """Write a checkpoint of ``model`` (and ``optimizer``, if given) to a new ``directory``.

    Args:
        directory: Where the checkpoint goes; it must not exist. Missing parents are created.
        model: The model; its LoRA adapters must not be merged.
        step: The training step, recorded in the manifest.
        optimizer: Save its state (and the dropout RNG state) for resuming training.
        user_payload: A JSON object stored in the manifest (e.g. the engine's context snapshot).
        weights: Write these instead of ``model.state_dict()`` (a sharded model's full
            weights).
        optimizer_state: Write this name-keyed optimizer state (see
            :func:`named_optimizer_state`) instead of ``optimizer``'s (a sharded optimizer's
            full state); it saves the training state as ``optimizer`` does.

    Returns:
        The manifest as written.

    Raises:
        CheckpointExists: ``directory`` already exists.
        ValueError: ``user_payload`` is not JSON, or a LoRA adapter is merged.
    """
    target = Path(directory)
    if target.exists():
        raise CheckpointExists(f"checkpoint {target} already exists", path=str(target))
    if any(layer.merged for layer in lora_layers(model)):
        raise ValueError("unmerge the LoRA adapters before saving a checkpoint")
    try:
        json.dumps(user_payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"user_payload is not JSON-serialisable: {exc}") from exc

    if weights is None:
        weights = model.state_dict()
    contents: dict[str, bytes] = {
        MODEL_FILE: safetensors.torch.save(
            {name: t.detach().cpu().contiguous() for name, t in weights.items()}
        )
    }
    if optimizer_state is None and optimizer is not None:
        optimizer_state = named_optimizer_state(model, optimizer)
    if optimizer_state is not None:
        tensors, train_json = _optimizer_payload(optimizer_state)
        tensors[_DROPOUT_RNG_KEY] = model.dropout_generator.get_state()
        contents[TRAIN_STATE_TENSORS_FILE] = safetensors.torch.save(tensors)
        contents[TRAIN_STATE_JSON_FILE] = json.dumps(train_json, sort_keys=True).encode()
    config = model_identity(model)
    manifest = CheckpointManifest(
        step=step,
        config=config,
        config_hash=sha256_of_json(config),
        files={
            name: FileRecord(size=len(data), sha256=hashlib.sha256(data).hexdigest())
            for name, data in contents.items()
        },
        user_payload=user_payload,
    )
    manifest_json = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": manifest.step,
        "config": manifest.config,
        "config_hash": manifest.config_hash,
        "files": {
            name: {"size": record.size, "sha256": record.sha256}
            for name, record in manifest.files.items()
        },
        "user_payload": manifest.user_payload,
        "user_payload_hash": sha256_of_json(manifest.user_payload),
    }
    contents[MANIFEST_FILE] = json.dumps(manifest_json, indent=2, sort_keys=True).encode()

    try:
        atomic_write_directory(target, contents)
    except FileExistsError as exc:
        raise CheckpointExists(f"checkpoint {exc}", path=str(target)) from exc
    return manifest


def read_manifest(directory: str | os.PathLike[str]) -> CheckpointManifest:
    """Read and validate ``manifest.json`` of the checkpoint in ``directory``.

    Raises:
        CheckpointCorrupted: the manifest is missing (an incomplete or foreign directory) or
            malformed.
        CheckpointMismatch: the manifest is of another format or format version.
    """
    path = Path(directory) / MANIFEST_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointCorrupted(
            f"{path} is missing: {directory} is not a complete checkpoint", path=str(path)
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointCorrupted(f"{path} is not readable JSON: {exc}", path=str(path)) from exc
    if not isinstance(raw, dict):
        raise CheckpointCorrupted(f"{path} is not a JSON object", path=str(path))
    if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        found = f"{raw.get('format')!r} version {raw.get('format_version')!r}"
        expected = f"{FORMAT!r} version {FORMAT_VERSION}"
        raise CheckpointMismatch(
            f"{path}: format {found} is not {expected}",
            path=str(path),
            differences=[f"format: checkpoint {found}, supported {expected}"],
        )
    try:
        files = {
            str(name): FileRecord(size=int(record["size"]), sha256=str(record["sha256"]))
            for name, record in raw["files"].items()
        }
        step, config, config_hash, payload = (
            raw["step"],
            raw["config"],
            raw["config_hash"],
            raw["user_payload"],
        )
        if not (
            isinstance(step, int)
            and isinstance(config, dict)
            and isinstance(config_hash, str)
            and (payload is None or isinstance(payload, dict))
        ):
            raise TypeError("a field has the wrong type")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointCorrupted(f"{path} is malformed: {exc!r}", path=str(path)) from exc
    if sha256_of_json(config) != config_hash:
        raise CheckpointCorrupted(f"{path}: config does not match config_hash", path=str(path))
    payload_hash = raw.get("user_payload_hash")  # absent from checkpoints of older versions
    if payload_hash is not None and sha256_of_json(payload) != payload_hash:
        raise CheckpointCorrupted(
            f"{path}: user_payload does not match user_payload_hash", path=str(path)
        )
    return CheckpointManifest(
        step=step, config=config, config_hash=config_hash, files=files, user_payload=payload
    )


def _read_verified(directory: Path, name: str, manifest: CheckpointManifest) -> bytes:
    path = directory / name
    record = manifest.files.get(name)
    if record is None:
        raise CheckpointCorrupted(f"{path} is not listed in the manifest", path=str(path))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointCorrupted(f"{path} is missing", path=str(path)) from None
    if len(data) != record.size:
        raise CheckpointCorrupted(
            f"{path} has {len(data)} bytes, the manifest says {record.size} (truncated?)",
            path=str(path),
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.sha256:
        raise CheckpointCorrupted(
            f"{path} fails its sha256 check: {digest} != {record.sha256}", path=str(path)
        )
    return data


def verify_checkpoint(directory: str | os.PathLike[str]) -> CheckpointManifest:
    """Check the whole checkpoint in ``directory`` without loading it: its manifest, and the
    size and sha256 of every file it lists.

    Returns:
        The checkpoint's manifest.

    Raises:
        CheckpointCorrupted: as :func:`read_manifest`, or a file is missing, truncated or
            fails its sha256 check.
        CheckpointMismatch: as :func:`read_manifest`.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    for name in manifest.files:
        _read_verified(root, name, manifest)
    return manifest


def set_aside(directory: str | os.PathLike[str]) -> Path:
    """Move the (damaged) checkpoint in ``directory`` out of the way, keeping its files: it
    is renamed to a hidden ``.<name>.damaged-<random>`` beside it, which no reader takes for
    a checkpoint, so that a new one can be written in its place.

    Returns:
        Where it went.
    """
    source = Path(directory)
    target = source.with_name(f".{source.name}.damaged-{secrets.token_hex(4)}")
    os.rename(source, target)
    fsync_directory(source.parent)
    return target


def remove_partial_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.<name>.*.partial`` staging directories that a process killed while
    writing a checkpoint left in ``root`` or its subdirectories (one level down, where
    checkpoints of each kind go).

    Returns:
        The directories removed.
    """
    base = Path(root)
    leftovers = [
        path
        for pattern in (f".*{PARTIAL_SUFFIX}", f"*/.*{PARTIAL_SUFFIX}")
        for path in base.glob(pattern)
        if path.is_dir() and not path.is_symlink()
    ]
    for path in leftovers:
        shutil.rmtree(path)
    return leftovers


def _load_tensors(directory: Path, name: str, manifest: CheckpointManifest) -> dict[str, Tensor]:
    data = _read_verified(directory, name, manifest)
    try:
        return safetensors.torch.load(data)
    except SafetensorError as exc:
        path = directory / name
        raise CheckpointCorrupted(
            f"{path} is not valid safetensors: {exc}", path=str(path)
        ) from exc


def _config_differences(
    saved: dict[str, Any], expected: dict[str, Any], prefix: str = ""
) -> list[str]:
    differences: list[str] = []
    for key in sorted(set(saved) | set(expected)):
        left, right = saved.get(key), expected.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            differences += _config_differences(left, right, f"{prefix}{key}.")
        elif left != right:
            differences.append(f"{prefix}{key}: checkpoint {left!r}, model {right!r}")
    return differences


def _tensor_differences(saved: dict[str, Tensor], expected: dict[str, Tensor]) -> list[str]:
    differences = [
        f"{name}: missing from checkpoint" for name in sorted(set(expected) - set(saved))
    ]
    differences += [f"{name}: not in the model" for name in sorted(set(saved) - set(expected))]
    for name in sorted(set(saved) & set(expected)):
        got, want = saved[name], expected[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            differences.append(
                f"{name}: checkpoint {got.dtype} {tuple(got.shape)}, "
                f"model {want.dtype} {tuple(want.shape)}"
            )
    return differences


def checkpoint_model(directory: str | os.PathLike[str], *, device: str = "cpu") -> Transformer:
    """The model the checkpoint in ``directory`` was saved from (its LoRA adapters
    unmerged), built on ``device`` from the manifest's config, with the checkpoint's weights.

    Raises:
        ValueError: the manifest's config is not a local torch model's.
        CheckpointError: as :func:`read_manifest` and :func:`load_checkpoint`.
    """
    identity = read_manifest(directory).config
    try:
        config = dataclasses.replace(ModelConfig.from_identity(identity["model"]), device=device)
        lora = identity.get("lora")
        lora_config = (
            None if lora is None else LoraConfig(**{**lora, "targets": tuple(lora["targets"])})
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a local torch checkpoint's config: {exc}") from exc
    model = build_model(config, seed=0, initialise=False)  # every weight is loaded next
    if lora_config is not None:
        apply_lora(model, lora_config)
    load_checkpoint(directory, model=model)
    return model


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: Transformer,
    optimizer: torch.optim.Optimizer | None = None,
    sharded: bool = False,
) -> CheckpointManifest:
    """Load the checkpoint in ``directory`` into ``model`` (and ``optimizer``, if given).

    ``model`` must have the checkpoint's config and LoRA config (its device may differ), and
    ``optimizer`` must have been built over the same trainable parameters. Every file is
    verified before anything is changed; with ``optimizer``, the dropout RNG state is restored
    too, so training continues exactly as if it had not stopped. A ``sharded`` (FSDP) model
    and its optimizer take their shards of the full tensors (a collective: every rank loads).

    Returns:
        The checkpoint's manifest (step and user payload).

    Raises:
        CheckpointCorrupted: a file is missing, truncated, fails its sha256 check or does not
            parse.
        CheckpointMismatch: the config, the tensors or the optimizer's parameters do not match,
            or ``optimizer`` was given and the checkpoint has no optimizer state.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    manifest_path = str(root / MANIFEST_FILE)
    differences = _config_differences(manifest.config, model_identity(model))
    if differences:
        raise CheckpointMismatch(
            f"{manifest_path}: checkpoint config differs from the model's: "
            + "; ".join(differences),
            path=manifest_path,
            differences=differences,
        )
    weights = _load_tensors(root, MODEL_FILE, manifest)
    differences = _tensor_differences(weights, model.state_dict())
    if differences:
        raise CheckpointMismatch(
            f"{root / MODEL_FILE}: tensors differ from the model's: " + "; ".join(differences),
            path=str(root / MODEL_FILE),
            differences=differences,
        )
    optimizer_state = None
    rng_state = None
    if optimizer is not None:
        if not manifest.has_train_state:
            raise CheckpointMismatch(
                f"{root} holds weights only; it has no optimizer state to load",
                path=str(root),
                differences=["optimizer state: absent from checkpoint"],
            )
        train_tensors = _load_tensors(root, TRAIN_STATE_TENSORS_FILE, manifest)
        json_path = root / TRAIN_STATE_JSON_FILE
        try:
            train_json = json.loads(_read_verified(root, TRAIN_STATE_JSON_FILE, manifest))
        except ValueError as exc:
            raise CheckpointCorrupted(
                f"{json_path} is not JSON: {exc}", path=str(json_path)
            ) from exc
        rng_state = train_tensors.pop(_DROPOUT_RNG_KEY, None)
        current_rng = model.dropout_generator.get_state()
        if rng_state is not None and rng_state.shape != current_rng.shape:
            # A CPU generator's state cannot seed a CUDA one and vice versa.
            raise CheckpointMismatch(
                f"{root / TRAIN_STATE_TENSORS_FILE}: the dropout RNG state was saved on another "
                "device type",
                path=str(root / TRAIN_STATE_TENSORS_FILE),
                differences=[f"{_DROPOUT_RNG_KEY}: state of another device type"],
            )
        optimizer_state = _rebuild_optimizer_state(
            model, optimizer, train_tensors, train_json, path=str(json_path)
        )
    if sharded:
        load_full_state(model, optimizer, weights, optimizer_state)
    else:
        model.load_state_dict(weights)
        if optimizer is not None and optimizer_state is not None:
            optimizer.load_state_dict(_indexed(optimizer_state))
    if optimizer is not None and optimizer_state is not None and rng_state is not None:
        model.dropout_generator.set_state(rng_state)
    return manifest


def _rebuild_optimizer_state(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, Tensor],
    train_json: Any,
    *,
    path: str,
) -> dict[str, Any]:
    """The saved state, name-keyed (see :func:`named_optimizer_state`), once its parameters
    are checked against ``optimizer``'s."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    current_groups = [
        [names.get(id(p), "?") for p in group["params"]] for group in optimizer.param_groups
    ]
    try:
        saved_groups: list[dict[str, Any]] = train_json["param_groups"]
        scalars: dict[str, dict[str, Any]] = train_json["scalars"]
        saved_names = [list(group["params"]) for group in saved_groups]
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointCorrupted(f"{path} is malformed: {exc!r}", path=path) from exc
    if saved_names != current_groups:
        raise CheckpointMismatch(
            f"{path}: the optimizer's parameters differ from the checkpoint's",
            path=path,
            differences=[f"optimizer parameters: checkpoint {saved_names}, model {current_groups}"],
        )
    state: dict[str, dict[str, Any]] = {}
    param_groups: list[dict[str, Any]] = []
    for saved_group, group_names in zip(saved_groups, saved_names, strict=True):
        for name in group_names:
            prefix = f"{_OPTIMIZER_PREFIX}{name}/"
            entry: dict[str, Any] = {
                key[len(prefix) :]: value
                for key, value in tensors.items()
                if key.startswith(prefix)
            }
            entry.update(scalars.get(name, {}))
            if entry:
                state[name] = entry
        group = dict(saved_group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        param_groups.append(group)
    return {"state": state, "param_groups": param_groups}


def _indexed(named_state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state as ``optimizer.load_state_dict`` takes it: keyed by the
    parameters' positions across the groups."""
    state: dict[int, dict[str, Any]] = {}
    param_groups: list[dict[str, Any]] = []
    index = 0
    for group in named_state["param_groups"]:
        indices = []
        for name in group["params"]:
            if name in named_state["state"]:
                state[index] = named_state["state"][name]
            indices.append(index)
            index += 1
        param_groups.append({**group, "params": indices})
    return {"state": state, "param_groups": param_groups}
