"""The server's state and operations: sessions, models, samplers, checkpoints, futures.

Models are :class:`LocalTorchTrainingClient`\\ s, samplers :class:`LocalTorchSamplingClient`\\ s;
this module speaks the ports and leaves HTTP to ``_app``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import msgspec
import tinker.types

from crucible_kitchen.adapters.local_torch import (
    FannedOutSamplingClient,
    LocalTokenizer,
    LocalTorchSamplingClient,
    LocalTorchTrainingClient,
    LoraConfig,
    ShardedSamplingClient,
    local_torch_adapters,
)
from crucible_kitchen.ports import LOSS_FN_INPUTS, AdamParams

from ._errors import ServerClosed, WireError, invalid, not_found
from ._futures import PROTOBUF, FutureTable, Reply
from ._queue import Finish, ModelQueue, SamplerQueue, Start
from ._topk import topk_prompt_logprobs
from ._wire import (
    ForwardBackwardCall,
    encode_forward_backward_output,
    encode_sample_response,
    model_input_from_sdk,
    sampling_params_from_sdk,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from anyio.abc import TaskGroup

    from crucible_kitchen.ports import LossFnType

    from ._settings import TinkerSettings

__all__ = ("TinkerServer",)

_KINDS: Final = {"weights": "training", "sampler_weights": "sampler"}
_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
_MODEL_ID: Final = re.compile(r"(sess-[0-9a-f]{16}):train:(\d+)")
_RUN_FILE: Final = "run.json"
_EPHEMERAL_PREFIX: Final = "ephemeral-sampler-"
_ARCH: Final = "crucible-kitchen-transformer"


@dataclass(eq=False)
class _Session:
    session_id: str
    user_metadata: dict[str, str]
    finished: bool = False
    model_ids: list[str] = field(default_factory=list)
    sampler_ids: list[str] = field(default_factory=list)


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a training run was made from; stored as ``run.json`` beside its checkpoints."""

    base_model: str
    lora_rank: int
    lora_seed: int
    train_mlp: bool
    train_attn: bool
    train_unembed: bool
    user_metadata: dict[str, str]
    created: float


@dataclass(eq=False)
class _Model:
    model_id: str
    record: RunRecord
    client: LocalTorchTrainingClient
    queue: ModelQueue
    last_request: float = field(default_factory=time.time)


@dataclass(eq=False)
class _Sampler:
    sampler_id: str
    base_model: str
    model_path: str | None
    client: LocalTorchSamplingClient
    queue: SamplerQueue


class TinkerServer:
    """The Tinker API over the local torch backend (see the package docstring).

    Use :meth:`lifespan` as the aiohttp application's ``cleanup_ctx``.

    Hooks, for monitoring and tests: ``before_start(model_id, seq_id)`` is awaited before
    each of a model's requests starts (holding it holds the model's queue);
    ``on_queue_full(owner)`` is called for each submission refused because its model's or
    sampler's queue is full.
    """

    def __init__(self, settings: TinkerSettings) -> None:
        self.settings = settings
        self.futures = FutureTable(
            ttl_s=settings.future_ttl_s, max_finished=settings.max_finished_futures
        )
        self._preset_tokenizer = LocalTokenizer.named(settings.tokenizer)
        self._model_tokenizers: dict[str, LocalTokenizer] = {}
        self._root: Path | None = None if settings.root is None else Path(settings.root)
        self._sessions: dict[str, _Session] = {}
        self._models: dict[str, _Model] = {}
        self._creating: dict[str, str] = {}
        self._samplers: dict[str, _Sampler] = {}
        self._base_samplers: dict[str, LocalTorchSamplingClient] = {}
        self._task_group: TaskGroup | None = None
        self._closing = anyio.Event()
        self.stopping = False
        self.before_start: Callable[[str, int], Awaitable[None]] | None = None
        self.on_queue_full: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ lifetime

    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """Own the task group of every model's queue while the application runs (in a task
        of its own, as aiohttp runs startup and cleanup in different places)."""
        ready = asyncio.get_running_loop().create_future()
        owner = asyncio.create_task(self._own(ready), name="crucible-kitchen-tinker")
        await asyncio.wait((owner, ready), return_when=asyncio.FIRST_COMPLETED)
        if owner.done():
            owner.result()
        try:
            yield
        finally:
            await self.shutdown()
            self._closing.set()
            await owner

    async def _own(self, ready: asyncio.Future[None]) -> None:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="crucible-kitchen-tinker-"))
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            ready.set_result(None)
            await self._closing.wait()
            task_group.cancel_scope.cancel()
        self._task_group = None

    async def shutdown(self) -> None:
        """Refuse new requests, fail those not started, give the running ones
        ``shutdown_grace_s`` to finish, then fail what is left. Idempotent."""
        self.stopping = True
        message = "the server is shutting down"
        for model in self._models.values():
            model.queue.fail_waiting(message)
        await self.futures.settle(self.settings.shutdown_grace_s)
        self.futures.fail_unfinished(message)

    def _group(self) -> TaskGroup:
        if self.stopping or self._task_group is None:
            raise ServerClosed
        return self._task_group

    # ------------------------------------------------------------------ sessions

    def create_session(self, user_metadata: dict[str, str]) -> str:
        session_id = f"sess-{os.urandom(8).hex()}"
        self._sessions[session_id] = _Session(session_id, dict(user_metadata))
        return session_id

    def session(self, session_id: str) -> _Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise not_found(f"no session {session_id!r}", resource=session_id) from None

    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def finish_session(self, session_id: str) -> None:
        self.session(session_id).finished = True

    # ------------------------------------------------------------------ models

    def create_model(self, request: tinker.types.CreateModelRequest) -> str:
        """Accept a create_model; the future's result is ``{"model_id"}``."""
        session = self.session(request.session_id)
        model_id = f"{session.session_id}:train:{request.model_seq_id}"
        lora = request.lora_config
        record = RunRecord(
            base_model=request.base_model,
            lora_rank=32 if lora is None else lora.rank,
            lora_seed=0 if lora is None or lora.seed is None else lora.seed,
            train_mlp=True if lora is None else lora.train_mlp,
            train_attn=True if lora is None else lora.train_attn,
            train_unembed=True if lora is None else lora.train_unembed,
            user_metadata={k: str(v) for k, v in (request.user_metadata or {}).items()},
            created=time.time(),
        )

        async def start() -> Finish:
            await self._new_model(session, model_id, record)
            return _ready({"model_id": model_id, "type": "create_model"})

        return self._once(model_id, start)

    def load_into_new_model(self, request: tinker.types.LoadWeightsRequest) -> str:
        """Accept a load_weights that creates its model (``create_training_client_from_state``)."""
        assert request.session_id is not None
        assert request.model_seq_id is not None
        session = self.session(request.session_id)
        model_id = f"{session.session_id}:train:{request.model_seq_id}"

        async def start() -> Finish:
            source_run, directory = self._existing_checkpoint(request.path)
            source = await anyio.to_thread.run_sync(self._read_record, source_run)
            metadata = {k: str(v) for k, v in (request.user_metadata or {}).items()}
            record = msgspec.structs.replace(
                source, user_metadata=metadata or source.user_metadata, created=time.time()
            )
            model = await self._new_model(session, model_id, record)
            future = await model.client.load_state(
                str(directory), with_optimizer=request.optimizer, request_id=f"{model_id}:load"
            )
            await future.result()
            return _ready({"path": request.path, "model_id": model_id, "type": "load_weights"})

        return self._once(model_id, start)

    def _once(self, model_id: str, start: Start) -> str:
        known = self._creating.get(model_id)
        if known is not None:
            return known
        if model_id in self._models:
            raise invalid(f"model {model_id} exists already")
        queue = SamplerQueue(model_id, self.futures, self._group(), 1)
        request_id = queue.submit(start)
        self._creating[model_id] = request_id
        return request_id

    def _check_served(self, base_model: str) -> None:
        if base_model not in self.settings.served_models:
            raise invalid(
                f"base_model {base_model!r} is not served here; "
                f"served: {', '.join(self.settings.served_models)}"
            )

    def _source(self, base_model: str) -> str:
        """What local torch loads for ``base_model``: a preset name or a model directory."""
        directory = self.settings.model_directory(base_model)
        return base_model if directory is None else str(directory)

    def _tokenizer(self, base_model: str) -> LocalTokenizer:
        """``base_model``'s tokenizer: a model directory's own (read once, from disk), else
        the presets' one."""
        directory = self.settings.model_directory(base_model)
        if directory is None:
            return self._preset_tokenizer
        if base_model not in self._model_tokenizers:
            self._model_tokenizers[base_model] = LocalTokenizer.hf(directory)
        return self._model_tokenizers[base_model]

    def _tokenizer_id(self, base_model: str) -> str:
        """What the SDK's ``get_tokenizer`` loads: a model directory's path (transformers'
        ``AutoTokenizer`` reads it offline), else the presets' tokenizer id."""
        directory = self.settings.model_directory(base_model)
        return self._preset_tokenizer.tokenizer_id if directory is None else str(directory)

    async def _new_model(self, session: _Session, model_id: str, record: RunRecord) -> _Model:
        self._check_served(record.base_model)
        targets = (("q", "k", "v", "o") if record.train_attn else ()) + (
            ("gate", "up", "down") if record.train_mlp else ()
        )
        if not targets:
            raise invalid(
                "train_attn and train_mlp are both false: the local backend has no LoRA "
                "adapter for the unembedding alone"
            )
        directory = self._run_dir(model_id)

        def build() -> LocalTorchTrainingClient:
            directory.mkdir(parents=True, exist_ok=True)
            _write_json(directory / _RUN_FILE, record)
            return LocalTorchTrainingClient(
                model=self._source(record.base_model),
                seed=self.settings.base_seed,
                lora=LoraConfig(rank=record.lora_rank, seed=record.lora_seed, targets=targets),
                tokenizer=self._tokenizer(record.base_model),
                device=self.settings.device,
                checkpoint_dir=directory,
                default_max_tokens=self.settings.default_max_tokens,
                threads=self.settings.threads,
                distributed=None,
            )

        client = await anyio.to_thread.run_sync(build)
        task_group = self._group()

        async def before_start(seq_id: int) -> None:
            if self.before_start is not None:
                await self.before_start(model_id, seq_id)

        queue = ModelQueue(
            model_id, self.futures, task_group, self.settings.max_queue, before_start
        )
        model = _Model(model_id, record, client, queue)
        self._models[model_id] = model
        session.model_ids.append(model_id)
        task_group.start_soon(queue.run)
        return model

    def model(self, model_id: str) -> _Model:
        """The model ``model_id``, for a new request.

        Raises:
            ServerClosed: the server is shutting down.
            ResourceNotFound: no such model.
        """
        self._group()
        model = self._models.get(model_id)
        if model is None:
            raise not_found(f"no model {model_id!r}", resource=model_id)
        model.last_request = time.time()
        return model

    def get_info(self, model_id: str) -> dict[str, Any]:
        model = self.model(model_id)
        record = model.record
        return {
            "type": "get_info",
            "model_id": model_id,
            "model_data": {
                "arch": _ARCH,
                "model_name": record.base_model,
                "tokenizer_id": self._tokenizer_id(record.base_model),
            },
            "is_lora": True,
            "lora_rank": record.lora_rank,
            "model_name": record.base_model,
        }

    # ------------------------------------------------------------------ training

    def forward_backward(self, call: ForwardBackwardCall) -> str:
        model = self.model(call.model_id)
        client = model.client
        request_id = f"{call.model_id}:{call.seq_id}"

        async def start() -> Finish:
            loss_fn = _loss_fn(call.loss_fn)
            if call.forward_only:
                future = await client.forward(call.data, loss_fn, call.loss_fn_config)
            else:
                future = await client.forward_backward(
                    call.data, loss_fn, call.loss_fn_config, request_id=request_id
                )

            async def finish() -> Reply:
                output = await future.result()
                return Reply(encode_forward_backward_output(output), PROTOBUF)

            return finish

        return model.queue.submit(call.seq_id, start)

    def optim_step(self, request: tinker.types.OptimStepRequest) -> str:
        model = self.model(request.model_id)
        params = request.optim_params
        seq_id = _seq(request.seq_id)

        async def start() -> Finish:
            if not isinstance(params, tinker.types.AdamParams):
                raise invalid(
                    f"optimizer {type(params).__name__} is not supported; only AdamParams"
                )
            try:  # the same fields, with the port's range checks
                adam = AdamParams(**params.model_dump())
            except ValueError as exc:
                raise invalid(str(exc)) from exc
            future = await model.client.optim_step(adam, request_id=f"{model.model_id}:{seq_id}")

            async def finish() -> Reply:
                response = await future.result()
                return _reply({"metrics": {k: float(v) for k, v in response.metrics.items()}})

            return finish

        return model.queue.submit(seq_id, start)

    def save_weights(self, request: tinker.types.SaveWeightsRequest) -> str:
        model = self.model(request.model_id)
        seq_id = _seq(request.seq_id)

        async def start() -> Finish:
            name = _checkpoint_name(request.path or f"checkpoint-{seq_id}")
            target = model.client.checkpoint_dir / "weights" / name
            if request.overwrite and target.exists():
                await anyio.to_thread.run_sync(shutil.rmtree, target)
            future = await model.client.save_state(
                name,
                request_id=f"{model.model_id}:{seq_id}",
                user_payload={"user_metadata": request.user_metadata or {}},
            )

            async def finish() -> Reply:
                await future.result()
                return _reply({"path": _tinker_path(model.model_id, "weights", name)})

            return finish

        return model.queue.submit(seq_id, start)

    def save_weights_for_sampler(self, request: tinker.types.SaveWeightsForSamplerRequest) -> str:
        model = self.model(request.model_id)
        seq_id = _seq(request.seq_id)
        ephemeral = request.path is None
        session_id = model.model_id.split(":", 1)[0]

        async def start() -> Finish:
            if ephemeral and request.sampling_session_seq_id is None:
                raise invalid("save_weights_for_sampler needs a path or a sampling_session_seq_id")
            name = (
                f"{_EPHEMERAL_PREFIX}{seq_id}"
                if ephemeral
                else _checkpoint_name(request.path or "")
            )
            future = await model.client.save_weights_for_sampler(
                name, request_id=f"{model.model_id}:{seq_id}"
            )

            async def finish() -> Reply:
                response = await future.result()
                if not ephemeral:
                    return _reply({"path": _tinker_path(model.model_id, "sampler_weights", name)})
                client = _in_process(await model.client.create_sampling_client(response.path))
                await anyio.to_thread.run_sync(shutil.rmtree, response.path)
                sampler_id = f"{session_id}:sample:{request.sampling_session_seq_id}"
                self._add_sampler(
                    self.session(session_id), sampler_id, model.record.base_model, None, client
                )
                return _reply({"sampling_session_id": sampler_id})

            return finish

        return model.queue.submit(seq_id, start)

    def load_weights(self, request: tinker.types.LoadWeightsRequest) -> str:
        """The legacy ``TrainingClient.load_state``: an ordered request on an existing model."""
        assert request.model_id is not None
        model = self.model(request.model_id)
        seq_id = _seq(request.seq_id)

        async def start() -> Finish:
            _, directory = self._existing_checkpoint(request.path)
            future = await model.client.load_state(
                str(directory),
                with_optimizer=request.optimizer,
                request_id=f"{model.model_id}:{seq_id}",
            )

            async def finish() -> Reply:
                await future.result()
                return _reply({"path": request.path, "type": "load_weights"})

            return finish

        return model.queue.submit(seq_id, start)

    # ------------------------------------------------------------------ sampling

    async def create_sampling_session(
        self, request: tinker.types.CreateSamplingSessionRequest
    ) -> str:
        session = self.session(request.session_id)
        sampler_id = f"{session.session_id}:sample:{request.sampling_session_seq_id}"
        if sampler_id not in self._samplers:
            base_model, client = await self._sampling_client(request.model_path, request.base_model)
            self._add_sampler(session, sampler_id, base_model, request.model_path, client)
        return sampler_id

    def sampler_info(self, sampler_id: str) -> dict[str, Any]:
        sampler = self._sampler(sampler_id)
        return {
            "sampler_id": sampler_id,
            "base_model": sampler.base_model,
            "model_path": sampler.model_path,
        }

    async def sample(self, request: tinker.types.SampleRequest) -> tuple[str, list[str]]:
        """Accept an asample; its request id and one sequence id per sample."""
        self._group()
        if request.sampling_session_id is not None:
            sampler = self._sampler(request.sampling_session_id)
        else:
            key = f"direct:{request.model_path or ''}:{request.base_model or ''}"
            if key not in self._samplers:
                base_model, client = await self._sampling_client(
                    request.model_path, request.base_model
                )
                self._samplers[key] = _Sampler(
                    key, base_model, request.model_path, client, self._sampler_queue(key)
                )
            sampler = self._samplers[key]
        if request.topk_sample_logprobs:
            raise invalid("topk_sample_logprobs is not supported by this server")
        if request.target_prompt_logprobs is not None or request.prompt_alt_tokens_k:
            raise invalid("target_prompt_logprobs and prompt_alt_tokens are not supported")
        prompt = model_input_from_sdk(request.prompt)
        params = sampling_params_from_sdk(request.sampling_params)
        with_prompt_logprobs = bool(request.prompt_logprobs)
        last_n = request.prompt_logprobs_last_n
        top_k = request.topk_prompt_logprobs
        vocab = sampler.client.model.config.vocab_size
        if not 0 <= top_k <= vocab:
            raise invalid(f"topk_prompt_logprobs {top_k} must be in [0, {vocab}]")

        async def start() -> Finish:
            future = await sampler.client.sample(
                prompt,
                request.num_samples,
                params,
                include_prompt_logprobs=with_prompt_logprobs,
            )

            async def finish() -> Reply:
                response = await future.result()
                if last_n is not None and response.prompt_logprobs is not None:
                    cut = len(response.prompt_logprobs) - last_n
                    response = msgspec.structs.replace(
                        response,
                        prompt_logprobs=(None,) * cut + response.prompt_logprobs[cut:],
                    )
                top = None
                if top_k:
                    top = await anyio.to_thread.run_sync(
                        topk_prompt_logprobs, sampler.client, prompt.to_ints(), top_k, last_n
                    )
                return Reply(encode_sample_response(response, top), PROTOBUF)

            return finish

        request_id = sampler.queue.submit(start)
        return request_id, [f"{request_id}:{index}" for index in range(request.num_samples)]

    def _sampler(self, sampler_id: str) -> _Sampler:
        sampler = self._samplers.get(sampler_id)
        if sampler is None:
            raise not_found(f"no sampling session {sampler_id!r}", resource=sampler_id)
        return sampler

    def _sampler_queue(self, owner: str) -> SamplerQueue:
        return SamplerQueue(owner, self.futures, self._group(), self.settings.max_queue)

    def _add_sampler(
        self,
        session: _Session,
        sampler_id: str,
        base_model: str,
        model_path: str | None,
        client: LocalTorchSamplingClient,
    ) -> None:
        queue = self._sampler_queue(sampler_id)
        self._samplers[sampler_id] = _Sampler(sampler_id, base_model, model_path, client, queue)
        session.sampler_ids.append(sampler_id)

    async def _sampling_client(
        self, model_path: str | None, base_model: str | None
    ) -> tuple[str, LocalTorchSamplingClient]:
        if model_path is not None:
            run_id, directory = self._existing_checkpoint(model_path)
            owner = self._models.get(run_id)
            if owner is not None:
                return owner.record.base_model, _in_process(
                    await owner.client.create_sampling_client(str(directory))
                )
            record = await anyio.to_thread.run_sync(self._read_record, run_id)
            client = await anyio.to_thread.run_sync(
                self._sampler_from_checkpoint, directory, record.base_model
            )
            return record.base_model, client
        if base_model is None:
            raise invalid("give a model_path or a base_model")
        self._check_served(base_model)
        if base_model not in self._base_samplers:
            self._base_samplers[base_model] = await anyio.to_thread.run_sync(
                self._base_sampler, base_model
            )
        return base_model, self._base_samplers[base_model]

    def _base_sampler(self, base_model: str) -> LocalTorchSamplingClient:
        adapters = local_torch_adapters(
            model=self._source(base_model),
            seed=self.settings.base_seed,
            device=self.settings.device,
            tokenizer=self._tokenizer(base_model),
            default_max_tokens=self.settings.default_max_tokens,
            threads=self.settings.threads,
        )
        client = adapters["sampling_client"]
        assert isinstance(client, LocalTorchSamplingClient)
        return client

    def _sampler_from_checkpoint(
        self, directory: Path, base_model: str
    ) -> LocalTorchSamplingClient:
        return LocalTorchSamplingClient.from_checkpoint(
            directory,
            self._tokenizer(base_model),
            device=self.settings.device,
            seed=self.settings.base_seed,
            default_max_tokens=self.settings.default_max_tokens,
            threads=self.settings.threads,
        )

    # ------------------------------------------------------------------ checkpoints, REST

    def training_run(self, run_id: str) -> dict[str, Any]:
        record = self._read_record(run_id)
        checkpoints = self.checkpoints(run_id)
        latest = {
            kind: max(
                (c for c in checkpoints if c["checkpoint_type"] == kind),
                key=lambda c: c["time"],
                default=None,
            )
            for kind in ("training", "sampler")
        }
        model = self._models.get(run_id)
        last = record.created if model is None else model.last_request
        return {
            "training_run_id": run_id,
            "base_model": record.base_model,
            "model_owner": run_id.split(":", 1)[0],
            "is_lora": True,
            "corrupted": False,
            "lora_rank": record.lora_rank,
            "last_request_time": _iso(last),
            "last_checkpoint": latest["training"],
            "last_sampler_checkpoint": latest["sampler"],
            "user_metadata": record.user_metadata,
        }

    def training_run_ids(self) -> list[str]:
        return list(self._models)

    def weights_info(self, tinker_path: str) -> dict[str, Any]:
        run_id, _ = self._existing_checkpoint(tinker_path)
        record = self._read_record(run_id)
        return {
            "base_model": record.base_model,
            "is_lora": True,
            "lora_rank": record.lora_rank,
            "train_unembed": record.train_unembed,
            "train_mlp": record.train_mlp,
            "train_attn": record.train_attn,
        }

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        """The run's complete checkpoints (those with a manifest), oldest first."""
        run_dir = self._run_dir(run_id)
        found = []
        for kind, checkpoint_type in _KINDS.items():
            base = run_dir / kind
            if not base.is_dir():
                continue
            for directory in base.iterdir():
                manifest = directory / "manifest.json"
                if directory.name.startswith(_EPHEMERAL_PREFIX) or not manifest.is_file():
                    continue
                found.append(
                    {
                        "checkpoint_id": f"{kind}/{directory.name}",
                        "checkpoint_type": checkpoint_type,
                        "time": _iso(manifest.stat().st_mtime),
                        "tinker_path": _tinker_path(run_id, kind, directory.name),
                        "size_bytes": sum(f.stat().st_size for f in directory.iterdir()),
                        "public": False,
                    }
                )
        return sorted(found, key=lambda c: (c["time"], c["checkpoint_id"]))

    def delete_checkpoint(self, run_id: str, kind: str, name: str) -> None:
        _, directory = self._existing_checkpoint(_tinker_path(run_id, kind, name))
        shutil.rmtree(directory)

    def _run_dir(self, run_id: str) -> Path:
        match = _MODEL_ID.fullmatch(run_id)
        if match is None or self._root is None:
            raise not_found(f"no training run {run_id!r}", resource=run_id)
        return self._root / match.group(1) / f"train-{match.group(2)}"

    def _checkpoint_dir(self, tinker_path: str) -> tuple[str, Path]:
        """The run id and directory of a ``tinker://{run}/{kind}/{name}`` path.

        Raises:
            InvalidRequest: not such a path.
        """
        parts = tinker_path.removeprefix("tinker://").split("/")
        if not tinker_path.startswith("tinker://") or len(parts) != 3 or parts[1] not in _KINDS:
            raise invalid(
                f"{tinker_path!r} is not a tinker://<run>/{{weights,sampler_weights}}/<name> path"
            )
        run_id, kind, name = parts
        return run_id, self._run_dir(run_id) / kind / _checkpoint_name(name)

    def _existing_checkpoint(self, tinker_path: str) -> tuple[str, Path]:
        """:meth:`_checkpoint_dir` of a complete checkpoint.

        Raises:
            ResourceNotFound: nothing is saved there.
        """
        run_id, directory = self._checkpoint_dir(tinker_path)
        if not (directory / "manifest.json").is_file():
            raise not_found(f"no checkpoint {tinker_path}", resource=tinker_path)
        return run_id, directory

    def _read_record(self, run_id: str) -> RunRecord:
        model = self._models.get(run_id)
        if model is not None:
            return model.record
        path = self._run_dir(run_id) / _RUN_FILE
        try:
            return msgspec.json.decode(path.read_bytes(), type=RunRecord)
        except (OSError, msgspec.DecodeError) as exc:
            raise not_found(f"no training run {run_id!r}", resource=run_id) from exc


def _loss_fn(name: str) -> LossFnType:
    if name not in LOSS_FN_INPUTS:
        raise invalid(f"loss_fn {name!r} is not supported; supported: {', '.join(LOSS_FN_INPUTS)}")
    return name  # type: ignore[return-value]


def _seq(seq_id: int | None) -> int:
    if seq_id is None:
        raise WireError("seq_id is required")
    return seq_id


def _checkpoint_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise invalid(f"checkpoint name {name!r}: 1 to 128 of A-Z a-z 0-9 . _ -, not '.' or '..'")
    return name


def _tinker_path(run_id: str, kind: str, name: str) -> str:
    return f"tinker://{run_id}/{kind}/{name}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _reply(value: object) -> Reply:
    return Reply(msgspec.json.encode(value))


def _ready(value: object) -> Finish:
    async def finish() -> Reply:
        return _reply(value)

    return finish


def _write_json(path: Path, value: object) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(msgspec.json.encode(value))
    os.replace(temporary, path)


def _in_process(
    client: LocalTorchSamplingClient | FannedOutSamplingClient | ShardedSamplingClient,
) -> LocalTorchSamplingClient:
    """A model's sampling client: the server trains each model in this process alone
    (``distributed=None``), so its samplers are never spread over ranks."""
    if not isinstance(client, LocalTorchSamplingClient):
        raise TypeError("the Tinker server's models train in one process, not across ranks")
    return client
