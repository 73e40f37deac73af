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
  (these import ``tokenizers``, from the ``torch`` extra, only when called); a model's own
  Hugging Face tokenizer, :class:`HfTokenizer` read by :func:`load_hf_tokenizer`.
- **Renderers**: :class:`RoleColonRenderer`, :class:`Llama3Renderer`, :class:`ChatMLRenderer`,
  Qwen3's with thinking blocks (:class:`Qwen3Renderer`, :func:`split_thinking`) and without
  (:class:`Qwen3DisableThinkingRenderer`) (:func:`get_renderer` by name), the model's own
  Jinja template (:class:`JinjaRenderer` over a :class:`ChatTemplate`;
  :func:`renderer_for_chat_template` picks a family's renderer), :class:`TrainOnWhat`
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

from crucible_kitchen.training._advantages import AdvantageAdjustment as AdvantageAdjustment
from crucible_kitchen.training._advantages import AdvantageNormalization as AdvantageNormalization
from crucible_kitchen.training._advantages import bits_per_byte as bits_per_byte
from crucible_kitchen.training._advantages import compute_advantages as compute_advantages
from crucible_kitchen.training._advantages import discounted_future_sum as discounted_future_sum
from crucible_kitchen.training._advantages import kl_penalty_advantages as kl_penalty_advantages
from crucible_kitchen.training._advantages import kl_sample_train_metrics as kl_sample_train_metrics
from crucible_kitchen.training._advantages import (
    nonconstant_group_indices as nonconstant_group_indices,
)
from crucible_kitchen.training._advantages import post_update_kl_metrics as post_update_kl_metrics
from crucible_kitchen.training._advantages import reverse_kl_advantages as reverse_kl_advantages
from crucible_kitchen.training._advantages import weighted_mean_nll as weighted_mean_nll
from crucible_kitchen.training._bpe import BpeTokenizer as BpeTokenizer
from crucible_kitchen.training._bpe import default_bpe_tokenizer as default_bpe_tokenizer
from crucible_kitchen.training._bpe import train_bpe_tokenizer as train_bpe_tokenizer
from crucible_kitchen.training._byte_tokenizer import ByteTokenizer as ByteTokenizer
from crucible_kitchen.training._chat_template import ChatTemplate as ChatTemplate
from crucible_kitchen.training._datasets import CHAT_TASKS as CHAT_TASKS
from crucible_kitchen.training._datasets import ArithmeticProblem as ArithmeticProblem
from crucible_kitchen.training._datasets import ChatExample as ChatExample
from crucible_kitchen.training._datasets import PreferencePair as PreferencePair
from crucible_kitchen.training._datasets import arithmetic_reward as arithmetic_reward
from crucible_kitchen.training._datasets import extract_integer_answer as extract_integer_answer
from crucible_kitchen.training._datasets import (
    generate_arithmetic_problems as generate_arithmetic_problems,
)
from crucible_kitchen.training._datasets import generate_chat_examples as generate_chat_examples
from crucible_kitchen.training._datasets import (
    generate_preference_pairs as generate_preference_pairs,
)
from crucible_kitchen.training._datasets import load_arithmetic_problems as load_arithmetic_problems
from crucible_kitchen.training._datasets import load_chat_examples as load_chat_examples
from crucible_kitchen.training._datasets import load_preference_pairs as load_preference_pairs
from crucible_kitchen.training._dpo import DPO_LOSS_TYPES as DPO_LOSS_TYPES
from crucible_kitchen.training._dpo import DPOLossType as DPOLossType
from crucible_kitchen.training._hf_tokenizer import HfTokenizer as HfTokenizer
from crucible_kitchen.training._hf_tokenizer import load_hf_tokenizer as load_hf_tokenizer
from crucible_kitchen.training._renderers import RENDERERS as RENDERERS
from crucible_kitchen.training._renderers import ChatMLRenderer as ChatMLRenderer
from crucible_kitchen.training._renderers import JinjaRenderer as JinjaRenderer
from crucible_kitchen.training._renderers import Llama3Renderer as Llama3Renderer
from crucible_kitchen.training._renderers import Message as Message
from crucible_kitchen.training._renderers import MessageRenderer as MessageRenderer
from crucible_kitchen.training._renderers import NextTokenExample as NextTokenExample
from crucible_kitchen.training._renderers import ParsedResponse as ParsedResponse
from crucible_kitchen.training._renderers import ParseTermination as ParseTermination
from crucible_kitchen.training._renderers import (
    Qwen3DisableThinkingRenderer as Qwen3DisableThinkingRenderer,
)
from crucible_kitchen.training._renderers import Qwen3Renderer as Qwen3Renderer
from crucible_kitchen.training._renderers import RenderedMessage as RenderedMessage
from crucible_kitchen.training._renderers import Renderer as Renderer
from crucible_kitchen.training._renderers import RoleColonRenderer as RoleColonRenderer
from crucible_kitchen.training._renderers import SupervisedExample as SupervisedExample
from crucible_kitchen.training._renderers import TrainOnWhat as TrainOnWhat
from crucible_kitchen.training._renderers import (
    build_text_completion_example as build_text_completion_example,
)
from crucible_kitchen.training._renderers import get_renderer as get_renderer
from crucible_kitchen.training._renderers import (
    renderer_for_chat_template as renderer_for_chat_template,
)
from crucible_kitchen.training._renderers import split_thinking as split_thinking
from crucible_kitchen.training._schedules import LRSchedule as LRSchedule
from crucible_kitchen.training._schedules import lr_multiplier as lr_multiplier
from crucible_kitchen.training._schedules import scheduled_learning_rate as scheduled_learning_rate
from crucible_kitchen.training._seeds import derive_seed as derive_seed
from crucible_kitchen.training._tokenizer import BOS_TOKEN as BOS_TOKEN
from crucible_kitchen.training._tokenizer import EOS_TOKEN as EOS_TOKEN
from crucible_kitchen.training._tokenizer import SPECIAL_TOKENS as SPECIAL_TOKENS
from crucible_kitchen.training._tokenizer import ChatTokenizer as ChatTokenizer

__all__ = (
    "CHAT_TASKS",
    "DPO_LOSS_TYPES",
    "RENDERERS",
    "AdvantageNormalization",
    "ArithmeticProblem",
    "BpeTokenizer",
    "ByteTokenizer",
    "ChatExample",
    "ChatMLRenderer",
    "ChatTemplate",
    "ChatTokenizer",
    "DPOLossType",
    "HfTokenizer",
    "JinjaRenderer",
    "LRSchedule",
    "Llama3Renderer",
    "Message",
    "MessageRenderer",
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
    "compute_advantages",
    "default_bpe_tokenizer",
    "derive_seed",
    "discounted_future_sum",
    "extract_integer_answer",
    "generate_arithmetic_problems",
    "generate_chat_examples",
    "generate_preference_pairs",
    "get_renderer",
    "kl_penalty_advantages",
    "kl_sample_train_metrics",
    "load_arithmetic_problems",
    "load_chat_examples",
    "load_hf_tokenizer",
    "load_preference_pairs",
    "lr_multiplier",
    "nonconstant_group_indices",
    "post_update_kl_metrics",
    "renderer_for_chat_template",
    "reverse_kl_advantages",
    "scheduled_learning_rate",
    "split_thinking",
    "train_bpe_tokenizer",
    "weighted_mean_nll",
)
