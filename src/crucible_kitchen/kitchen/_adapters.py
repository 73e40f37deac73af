"""The adapters of a run, by port name, and the built-in adapter sets' factories."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crucible_kitchen.errors import RegistryError
from crucible_kitchen.kitchen._registry import ADAPTERS_GROUP, adapter_factory, adapter_set_names
from crucible_kitchen.kitchen._run_dir import CHECKPOINTS_DIR, writes_run_files

if TYPE_CHECKING:
    import os

__all__ = ("Adapters",)


class Adapters(Mapping[str, Any]):
    """The adapters of a run, by port name (``adapters["training_client"]``).

    ``name`` is the registered adapter set they came from (``"noop"``, ``"local_torch"``), if
    any (see :meth:`named`).
    """

    def __init__(self, ports: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        self._ports: dict[str, Any] = {**(ports or {}), **more}
        self.name: str | None = None

    def __getitem__(self, port: str) -> Any:
        return self._ports[port]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ports)

    def __len__(self) -> int:
        return len(self._ports)

    def __repr__(self) -> str:
        return f"Adapters({', '.join(f'{k}={type(v).__name__}' for k, v in self._ports.items())})"

    def replace(self, **ports: Any) -> Adapters:
        """A copy with some ports bound to other adapters."""
        return Adapters(self._ports, **ports)

    @classmethod
    def named(
        cls,
        name: str,
        *,
        seed: int = 0,
        run_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Adapters:
        """The adapter set registered as ``name``, built with ``seed``, ``run_dir`` and its
        ``options``.

        Sets are registered by installed packages under the ``crucible_kitchen.adapters``
        entry-point group (see ``docs/guides/writing-adapters.md``); crucible-kitchen
        registers ``"noop"`` (:meth:`noop`), ``"local_torch"`` (:meth:`local_torch`),
        ``"tinker"`` (:meth:`tinker`) and ``"none"`` (:meth:`empty`). :meth:`names` lists them all.

        Raises:
            AdapterSetNotFound: no adapter set has that name (a :class:`PortError` listing
                the known names).
            RegistryError: the set's entry point cannot be loaded, or its factory returned
                something other than a mapping of ports.
        """
        built = adapter_factory(name)(seed=seed, run_dir=run_dir, **options)
        if not isinstance(built, Mapping):
            raise RegistryError(
                f"{ADAPTERS_GROUP} entry point {name!r} returned {type(built).__name__}, not "
                "Adapters (a mapping of port names to adapters)",
                group=ADAPTERS_GROUP,
                name=name,
            )
        adapters = built if isinstance(built, Adapters) else cls(built)
        adapters.name = name
        return adapters

    @staticmethod
    def names() -> list[str]:
        """The names of every registered adapter set, sorted."""
        return adapter_set_names()

    @classmethod
    def empty(cls, *, seed: int = 0, run_dir: str | os.PathLike[str] | None = None) -> Adapters:
        """No port bound: the ``"none"`` set, for workflows that need no adapters."""
        del seed, run_dir  # the factory signature every set shares
        return cls()

    @classmethod
    def noop(
        cls, *, seed: int = 0, run_dir: str | os.PathLike[str] | None = None, **options: Any
    ) -> Adapters:
        """Every port bound to a deterministic in-memory noop adapter (for tests and demos).

        ``run_dir`` is unused: everything stays in memory.
        """
        from crucible_kitchen.adapters.noop import noop_adapters

        del run_dir
        ports: dict[str, Any] = {
            str(port): adapter for port, adapter in noop_adapters(seed=seed, **options).items()
        }
        adapters = cls(ports)
        adapters.name = "noop"
        return adapters

    @classmethod
    def local_torch(
        cls,
        *,
        seed: int = 0,
        run_dir: str | os.PathLike[str] | None = None,
        model: Any = "tiny",
        tokenizer: Any = None,
        renderer: str | None = None,
        lora: Any = None,
        device: str = "cpu",
        threads: int | Literal["auto"] = "auto",
        data_root: str | os.PathLike[str] | None = None,
        teacher: str | os.PathLike[str] | None = None,
        feedback_root: str | os.PathLike[str] | None = None,
        **speed: Any,
    ) -> Adapters:
        """Real training and sampling on this machine (needs the ``torch`` extra).

        - ``training_client``, ``sampling_client``, ``tokenizer``, ``renderer``,
          ``evaluator`` (greedy replies to arithmetic questions, scored exactly) and, given a
          ``teacher`` checkpoint, ``teacher_sampling_client``: local torch
          (``local_torch_adapters``: a transformer from the ``model`` preset or config, seeded
          by ``seed``, or read from ``model`` given as a Hugging Face model directory; the
          ``tokenizer`` (``"byte"``, ``"bpe"``, a Hugging Face model directory or
          ``tokenizer.json``; by default a model directory's own, else ``"byte"``) and the
          chat format ``renderer`` (by default the one that fits the tokenizer: the model
          family's, ``"jinja"`` for the model's own chat template, or ``"chatml"``);
          checkpoints under ``run_dir/checkpoints``; torch computes with ``threads``
          intra-op threads: a count, or ``"auto"``: ``OMP_NUM_THREADS`` when set,
          else one for a model under 2 M parameters, else torch's current count; ``speed``
          settings go to it as they are: ``deterministic``, ``precision``, ``compile``,
          ``loss_chunk``, ``microbatch_tokens``, ``sampling_max_batch``, and ``parallelism``:
          ``"ddp"`` or ``"fsdp"`` under ``torchrun``);
        - ``dataset_store`` (the bundled data, or ``data_root``), ``blob_store`` and
          ``model_registry`` (under ``run_dir``) and, given a ``feedback_root``,
          ``feedback_client`` (whose exports the dataset store also reads): filesystem;
        - ``metrics_store``: the in-memory noop store, as there is no durable local one (a
          run directory's ``metrics.jsonl`` is the durable record).

        Without ``run_dir`` everything goes to temporary directories.

        Raises:
            ConfigError: an invalid model, LoRA, tokenizer, device, thread count or speed
                setting.
            TypeError: an unknown setting.
            PretrainedModelError: the Hugging Face model directory cannot be loaded.
        """
        from crucible_kitchen.adapters.local_torch import local_torch_adapters

        local = local_torch_adapters(
            model=model,
            seed=seed,
            lora=lora,
            device=device,
            tokenizer=tokenizer,
            renderer=renderer,
            run_dir=run_dir,
            threads=threads,
            teacher=teacher,
            **speed,
        )
        return cls._over_files(
            "local_torch", local, data_root=data_root, run_dir=run_dir, feedback_root=feedback_root
        )

    @classmethod
    def tinker(
        cls,
        *,
        seed: int = 0,
        run_dir: str | os.PathLike[str] | None = None,
        base_model: str = "tiny",
        lora_rank: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        tokenizer: str = "byte",
        renderer: str = "chatml",
        data_root: str | os.PathLike[str] | None = None,
    ) -> Adapters:
        """Training and sampling on a Tinker server through the official SDK (needs the
        ``tinker`` extra): Thinking Machines' service, or ``kitchen serve --tinker``.

        - ``training_client``, ``sampling_client``: ``tinker_adapters`` (a LoRA of rank
          ``lora_rank``, 32 if ``None``, on ``base_model``, its adapters seeded by ``seed``;
          ``base_url`` and ``api_key`` default to the SDK's ``TINKER_BASE_URL`` and
          ``TINKER_API_KEY``); nothing is sent before the run's first request;
        - ``tokenizer``, ``renderer``: the local ``tokenizer`` (``"byte"`` or ``"bpe"``, as
          ``kitchen serve --tinker`` serves its presets with) and chat format;
        - ``dataset_store``, ``blob_store``, ``model_registry``: filesystem, as for
          :meth:`local_torch`; ``metrics_store``: the in-memory noop store.

        Checkpoints live on the server (``tinker://`` paths); with a ``run_dir``, each is
        also recorded under ``run_dir/checkpoints`` with the run's position, so the run can
        be resumed (``kitchen resume``) against the same server.

        Raises:
            ConfigError: an invalid tokenizer.
            RenderError: an unknown renderer.
        """
        from crucible_kitchen.adapters.local_torch import LocalRenderer, LocalTokenizer
        from crucible_kitchen.adapters.tinker import tinker_adapters

        local_tokenizer = LocalTokenizer.named(tokenizer)
        remote = tinker_adapters(
            base_model=base_model,
            tokenizer=local_tokenizer,
            tokenizer_id=local_tokenizer.tokenizer_id,
            lora_rank=32 if lora_rank is None else lora_rank,
            seed=seed,
            base_url=base_url,
            api_key=api_key,
            checkpoint_dir=None if run_dir is None else Path(run_dir) / CHECKPOINTS_DIR,
        )
        backend = {
            **remote,
            "tokenizer": local_tokenizer,
            "renderer": LocalRenderer(local_tokenizer, renderer),
        }
        return cls._over_files("tinker", backend, data_root=data_root, run_dir=run_dir)

    @classmethod
    def _over_files(
        cls,
        name: str,
        backend: Mapping[Any, object],
        *,
        data_root: str | os.PathLike[str] | None,
        run_dir: str | os.PathLike[str] | None,
        feedback_root: str | os.PathLike[str] | None = None,
    ) -> Adapters:
        """The set ``name``: ``backend``'s ports over the filesystem stores and registry,
        with the in-memory noop metrics store."""
        from crucible_kitchen.adapters.filesystem import filesystem_adapters
        from crucible_kitchen.adapters.noop import NoopMetricsStore

        # Under torchrun only rank 0 writes the run directory; the others' blobs go nowhere.
        files = filesystem_adapters(
            data_root=data_root,
            run_dir=run_dir if writes_run_files() else None,
            feedback_root=feedback_root,
        )
        ports: dict[str, Any] = {str(port): adapter for port, adapter in files.items()}
        ports.update((str(port), adapter) for port, adapter in backend.items())
        ports["metrics_store"] = NoopMetricsStore()
        adapters = cls(ports)
        adapters.name = name
        return adapters
