"""Local PyTorch backend: a small decoder-only transformer trained and sampled in-process.

Importing this package is light: it never imports torch. The public names below are loaded
on first use (a module ``__getattr__``); all but :class:`LocalTokenizer`,
:class:`LocalRenderer` and the GGUF converter import torch.

- :class:`LocalTorchTrainingClient` (port ``training_client``) and
  :class:`LocalTorchSamplingClient` (``sampling_client``);
- :class:`LocalTokenizer` (``tokenizer``, over ``training``'s byte-level or BPE tokenizer,
  or a Hugging Face model's own) and :class:`LocalRenderer` (``renderer``, over
  ``training``'s chat formats): torch-free;
- :class:`ArithmeticEvaluator` (``evaluator``): greedy replies to arithmetic questions,
  scored exactly; torch-free;
- :func:`local_torch_adapters`: all of them, keyed by port name, and a teacher
  (``teacher_sampling_client``) from a checkpoint;
- :class:`ModelConfig` (with :class:`RopeScaling`), :class:`LoraConfig`, :data:`PRESETS`:
  the model's architecture, from a preset, by hand or read from a Hugging Face model
  directory (``model=`` a path);
  :func:`parameter_count` its size (what ``threads="auto"`` decides by);
- :func:`convert_gguf`: a GGUF file (llama.cpp's format) into a Hugging Face model directory,
  and :func:`cached_gguf_model`, the same converted once into a cache (torch-free; the
  ``gguf`` extra);
- :class:`HFModelDirectory`: what a Hugging Face model directory given as ``model=`` holds
  (``LocalTorchTrainingClient.pretrained``);
- :func:`export_hf` and :func:`export_peft`: a checkpoint as a Hugging Face model directory
  (LoRA merged) or its LoRA adapters in PEFT's format;
- :class:`StepOptions`: how the training step computes (precision, ``torch.compile``, loss
  chunks, micro-batches), as ``LocalTorchTrainingClient.step_options`` reports it;
- :class:`DistributedGroup`: this process's rank under ``torchrun`` (data-parallel training:
  ``LocalTorchTrainingClient(distributed=...)``, see ``docs/scaling.md``), and
  :class:`FannedOutSamplingClient`, the sampling client it then makes (requests spread over
  the ranks), or with ``parallelism="fsdp"`` :class:`ShardedSamplingClient` (it keeps only
  this rank's shards of its weights and generates through the sharded model).

The engine lives in private modules (``_config``, ``_model``, ``_lora``, ``_sampling``,
``_optim``, ``_checkpoint``, ``_trainer``, ``_hf_checkpoint``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from crucible_kitchen._lazy import lazy_exports

if TYPE_CHECKING:
    from crucible_kitchen.adapters.local_torch._bundle import (
        local_torch_adapters as local_torch_adapters,
    )
    from crucible_kitchen.adapters.local_torch._config import PRESETS as PRESETS
    from crucible_kitchen.adapters.local_torch._config import LoraConfig as LoraConfig
    from crucible_kitchen.adapters.local_torch._config import ModelConfig as ModelConfig
    from crucible_kitchen.adapters.local_torch._config import RopeScaling as RopeScaling
    from crucible_kitchen.adapters.local_torch._distributed import (
        DistributedGroup as DistributedGroup,
    )
    from crucible_kitchen.adapters.local_torch._evaluator import (
        ArithmeticEvaluator as ArithmeticEvaluator,
    )
    from crucible_kitchen.adapters.local_torch._fanout import (
        FannedOutSamplingClient as FannedOutSamplingClient,
    )
    from crucible_kitchen.adapters.local_torch._gguf import (
        cached_gguf_model as cached_gguf_model,
    )
    from crucible_kitchen.adapters.local_torch._gguf import convert_gguf as convert_gguf
    from crucible_kitchen.adapters.local_torch._hf_checkpoint import (
        HFModelDirectory as HFModelDirectory,
    )
    from crucible_kitchen.adapters.local_torch._hf_export import export_hf as export_hf
    from crucible_kitchen.adapters.local_torch._hf_export import export_peft as export_peft
    from crucible_kitchen.adapters.local_torch._model import parameter_count as parameter_count
    from crucible_kitchen.adapters.local_torch._renderer import LocalRenderer as LocalRenderer
    from crucible_kitchen.adapters.local_torch._sampling_client import (
        LocalTorchSamplingClient as LocalTorchSamplingClient,
    )
    from crucible_kitchen.adapters.local_torch._sharded_sampling import (
        ShardedSamplingClient as ShardedSamplingClient,
    )
    from crucible_kitchen.adapters.local_torch._tokenizer import LocalTokenizer as LocalTokenizer
    from crucible_kitchen.adapters.local_torch._trainer import StepOptions as StepOptions
    from crucible_kitchen.adapters.local_torch._training_client import (
        LocalTorchTrainingClient as LocalTorchTrainingClient,
    )

__all__ = (
    "PRESETS",
    "ArithmeticEvaluator",
    "DistributedGroup",
    "FannedOutSamplingClient",
    "HFModelDirectory",
    "LocalRenderer",
    "LocalTokenizer",
    "LocalTorchSamplingClient",
    "LocalTorchTrainingClient",
    "LoraConfig",
    "ModelConfig",
    "RopeScaling",
    "ShardedSamplingClient",
    "StepOptions",
    "cached_gguf_model",
    "convert_gguf",
    "export_hf",
    "export_peft",
    "local_torch_adapters",
    "parameter_count",
)

_LAZY: Final = {
    "ArithmeticEvaluator": "_evaluator",
    "PRESETS": "_config",
    "DistributedGroup": "_distributed",
    "FannedOutSamplingClient": "_fanout",
    "HFModelDirectory": "_hf_checkpoint",
    "LocalRenderer": "_renderer",
    "LocalTokenizer": "_tokenizer",
    "LocalTorchSamplingClient": "_sampling_client",
    "LocalTorchTrainingClient": "_training_client",
    "LoraConfig": "_config",
    "parameter_count": "_model",
    "ModelConfig": "_config",
    "RopeScaling": "_config",
    "ShardedSamplingClient": "_sharded_sampling",
    "cached_gguf_model": "_gguf",
    "convert_gguf": "_gguf",
    "export_hf": "_hf_export",
    "export_peft": "_hf_export",
    "StepOptions": "_trainer",
    "local_torch_adapters": "_bundle",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
