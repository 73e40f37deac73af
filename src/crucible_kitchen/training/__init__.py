"""Pure training math and data, shared by the stages and the local torch backend.

Nothing here touches the runtime, the ports or the adapters. Importing this package is cheap:
it imports neither torch nor ``tokenizers``.

Torch-free, re-exported here:

- **LR schedules**: :func:`scheduled_learning_rate`, :func:`lr_multiplier` (constant, linear,
  cosine, each with linear warmup).
- **RL advantages** (plain Python lists): :func:`compute_advantages` (GRPO group-centred,
  optional std normalization or leave-one-out), :func:`nonconstant_group_indices`,
  :func:`kl_penalty_advantages` (KL vs a reference folded into advantages),
  :func:`reverse_kl_advantages` (on-policy distillation), :func:`discounted_future_sum`,
  :func:`kl_sample_train_metrics`, :func:`post_update_kl_metrics`,
  :func:`weighted_mean_nll`, :func:`bits_per_byte`.
- **Seeds**: :func:`derive_seed`, the one way every generator in the package is seeded.
- **Tokenizers**: the :class:`ChatTokenizer` protocol renderers need, :class:`ByteTokenizer`,
  and :class:`BpeTokenizer` / :func:`train_bpe_tokenizer` / :func:`default_bpe_tokenizer`
  (these import ``tokenizers``, from the ``torch`` extra, only when called).
- **Renderers**: :class:`RoleColonRenderer`, :class:`Llama3Renderer`, :class:`ChatMLRenderer`,
  Qwen3's with thinking blocks (:class:`Qwen3Renderer`, :func:`split_thinking`) and without
  (:class:`Qwen3DisableThinkingRenderer`) (:func:`get_renderer` by name), :class:`TrainOnWhat`
  masks, :class:`SupervisedExample` and its next-token shift :class:`NextTokenExample`,
  completion parsing.
- **Bundled data**: chat tasks (SFT), arithmetic problems with :func:`arithmetic_reward` (RL),
  preference pairs (DPO) and the tokenizer corpus, each with its deterministic generator.

Needs torch, import explicitly:

- :mod:`crucible_kitchen.training.losses`: Tinker's sum-reduced token losses
  (``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``, ``dro``), DPO (TRL's
  ``sigmoid``, ``hinge`` and ``ipo``), top-K reverse-KL distillation, k3 KL and target
  logprobs from logits.
"""

from __future__ import annotations

from crucible_kitchen.training._advantages import (
    ADVANTAGE_NORMALIZATIONS,
    AdvantageAdjustment,
    AdvantageNormalization,
    bits_per_byte,
    compute_advantages,
    discounted_future_sum,
    kl_penalty_advantages,
    kl_sample_train_metrics,
    nonconstant_group_indices,
    post_update_kl_metrics,
    reverse_kl_advantages,
    weighted_mean_nll,
)
from crucible_kitchen.training._bpe import (
    DEFAULT_BPE_VOCAB_SIZE,
    BpeTokenizer,
    default_bpe_tokenizer,
    train_bpe_tokenizer,
)
from crucible_kitchen.training._byte_tokenizer import ByteTokenizer
from crucible_kitchen.training._corpus import bundled_corpus, generate_corpus
from crucible_kitchen.training._datasets import (
    CHAT_TASKS,
    ArithmeticProblem,
    ChatExample,
    PreferencePair,
    arithmetic_reward,
    extract_integer_answer,
    generate_arithmetic_problems,
    generate_chat_examples,
    generate_preference_pairs,
    load_arithmetic_problems,
    load_chat_examples,
    load_preference_pairs,
    to_jsonl,
    write_bundled_data,
)
from crucible_kitchen.training._dpo import DPO_LOSS_TYPES, DPOLossType
from crucible_kitchen.training._renderers import (
    RENDERERS,
    ChatMLRenderer,
    Llama3Renderer,
    Message,
    NextTokenExample,
    ParsedResponse,
    ParseTermination,
    Qwen3DisableThinkingRenderer,
    Qwen3Renderer,
    RenderedMessage,
    Renderer,
    RoleColonRenderer,
    SupervisedExample,
    TrainOnWhat,
    build_text_completion_example,
    get_renderer,
    split_thinking,
)
from crucible_kitchen.training._schedules import (
    LR_SCHEDULES,
    LRSchedule,
    lr_multiplier,
    scheduled_learning_rate,
)
from crucible_kitchen.training._seeds import derive_seed
from crucible_kitchen.training._tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    ChatTokenizer,
)

__all__ = (
    "ADVANTAGE_NORMALIZATIONS",
    "BOS_TOKEN",
    "CHAT_TASKS",
    "DEFAULT_BPE_VOCAB_SIZE",
    "DPO_LOSS_TYPES",
    "EOS_TOKEN",
    "LR_SCHEDULES",
    "PAD_TOKEN",
    "RENDERERS",
    "SPECIAL_TOKENS",
    "AdvantageAdjustment",
    "AdvantageNormalization",
    "ArithmeticProblem",
    "BpeTokenizer",
    "ByteTokenizer",
    "ChatExample",
    "ChatMLRenderer",
    "ChatTokenizer",
    "DPOLossType",
    "LRSchedule",
    "Llama3Renderer",
    "Message",
    "NextTokenExample",
    "ParseTermination",
    "ParsedResponse",
    "PreferencePair",
    "Qwen3DisableThinkingRenderer",
    "Qwen3Renderer",
    "RenderedMessage",
    "Renderer",
    "RoleColonRenderer",
    "SupervisedExample",
    "TrainOnWhat",
    "arithmetic_reward",
    "bits_per_byte",
    "build_text_completion_example",
    "bundled_corpus",
    "compute_advantages",
    "default_bpe_tokenizer",
    "derive_seed",
    "discounted_future_sum",
    "extract_integer_answer",
    "generate_arithmetic_problems",
    "generate_chat_examples",
    "generate_corpus",
    "generate_preference_pairs",
    "get_renderer",
    "kl_penalty_advantages",
    "kl_sample_train_metrics",
    "load_arithmetic_problems",
    "load_chat_examples",
    "load_preference_pairs",
    "lr_multiplier",
    "nonconstant_group_indices",
    "post_update_kl_metrics",
    "reverse_kl_advantages",
    "scheduled_learning_rate",
    "split_thinking",
    "to_jsonl",
    "train_bpe_tokenizer",
    "weighted_mean_nll",
    "write_bundled_data",
)
