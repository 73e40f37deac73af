"""The ports: one ``typing.Protocol`` per backend capability, and the data types they exchange.

Stages talk to backends only through these protocols; adapters (``crucible_kitchen.adapters``)
implement them. This package imports neither the runtime, nor any adapter, nor torch.

Conventions every port follows:

- Calls that reach a training or sampling backend return a :class:`BackendFuture` at once, so
  a workflow can keep several requests in flight; other ports' calls are awaited directly.
- Every mutating call takes a keyword ``request_id``. Adapters deduplicate on it: a re-sent
  request gets the first one's result and its effect is applied once
  (:func:`request_fingerprint` tells a re-sent request from a conflicting one).
- Backend failures are :class:`~crucible_kitchen.errors.BackendError` subclasses; foreign
  exceptions are translated at the adapter's edge.

``protocol_problems`` is re-exported for the Kitchen and the conformance checks, not public.
"""

from __future__ import annotations

from crucible_kitchen.ports._blob_store import RESERVED_KEY_PREFIX as RESERVED_KEY_PREFIX
from crucible_kitchen.ports._blob_store import BlobStore as BlobStore
from crucible_kitchen.ports._blob_store import check_blob_key as check_blob_key
from crucible_kitchen.ports._capabilities import Capabilities as Capabilities
from crucible_kitchen.ports._capabilities import Capability as Capability
from crucible_kitchen.ports._capabilities import CapabilityProvider as CapabilityProvider
from crucible_kitchen.ports._capabilities import capability as capability
from crucible_kitchen.ports._capabilities import declared_capabilities as declared_capabilities
from crucible_kitchen.ports._catalog import PORT_PROTOCOLS as PORT_PROTOCOLS
from crucible_kitchen.ports._catalog import PortName as PortName
from crucible_kitchen.ports._catalog import check_adapter as check_adapter
from crucible_kitchen.ports._catalog import protocol_problems as protocol_problems
from crucible_kitchen.ports._dataset_store import DatasetStore as DatasetStore
from crucible_kitchen.ports._env import Env as Env
from crucible_kitchen.ports._env_group_builder import EnvGroupBuilder as EnvGroupBuilder
from crucible_kitchen.ports._evaluator import Evaluator as Evaluator
from crucible_kitchen.ports._feedback_client import CuratedExample as CuratedExample
from crucible_kitchen.ports._feedback_client import ExportFormat as ExportFormat
from crucible_kitchen.ports._feedback_client import FeedbackClient as FeedbackClient
from crucible_kitchen.ports._feedback_client import FeedbackExport as FeedbackExport
from crucible_kitchen.ports._feedback_client import FeedbackTrigger as FeedbackTrigger
from crucible_kitchen.ports._future import FUTURE_DONE as FUTURE_DONE
from crucible_kitchen.ports._future import BackendFuture as BackendFuture
from crucible_kitchen.ports._metrics_store import MetricsStore as MetricsStore
from crucible_kitchen.ports._model_registry import ModelRegistry as ModelRegistry
from crucible_kitchen.ports._renderer import Renderer as Renderer
from crucible_kitchen.ports._sampling_client import TOPK_PROMPT_LOGPROBS as TOPK_PROMPT_LOGPROBS
from crucible_kitchen.ports._sampling_client import SamplingClient as SamplingClient
from crucible_kitchen.ports._sampling_client import TopKLogprobs as TopKLogprobs
from crucible_kitchen.ports._sampling_client import TopKPromptLogprobs as TopKPromptLogprobs
from crucible_kitchen.ports._tokenizer import Tokenizer as Tokenizer
from crucible_kitchen.ports._training_client import CHECKPOINT_DIR as CHECKPOINT_DIR
from crucible_kitchen.ports._training_client import CHECKPOINT_PAYLOAD as CHECKPOINT_PAYLOAD
from crucible_kitchen.ports._training_client import (
    SAVE_STATE_WITH_PAYLOAD as SAVE_STATE_WITH_PAYLOAD,
)
from crucible_kitchen.ports._training_client import (
    ReadCheckpointPayload as ReadCheckpointPayload,
)
from crucible_kitchen.ports._training_client import (
    SaveStateWithPayload as SaveStateWithPayload,
)
from crucible_kitchen.ports._training_client import TrainingClient as TrainingClient
from crucible_kitchen.ports._types import LOSS_FN_INPUTS as LOSS_FN_INPUTS
from crucible_kitchen.ports._types import AdamParams as AdamParams
from crucible_kitchen.ports._types import BlobInfo as BlobInfo
from crucible_kitchen.ports._types import CustomLossFn as CustomLossFn
from crucible_kitchen.ports._types import CustomLossOutput as CustomLossOutput
from crucible_kitchen.ports._types import DatasetInfo as DatasetInfo
from crucible_kitchen.ports._types import DatasetRow as DatasetRow
from crucible_kitchen.ports._types import Datum as Datum
from crucible_kitchen.ports._types import EncodedTextChunk as EncodedTextChunk
from crucible_kitchen.ports._types import EvalResult as EvalResult
from crucible_kitchen.ports._types import ForwardBackwardOutput as ForwardBackwardOutput
from crucible_kitchen.ports._types import ImageChunk as ImageChunk
from crucible_kitchen.ports._types import LoadStateResponse as LoadStateResponse
from crucible_kitchen.ports._types import LossFnType as LossFnType
from crucible_kitchen.ports._types import Message as Message
from crucible_kitchen.ports._types import MetricPoint as MetricPoint
from crucible_kitchen.ports._types import ModelArtifact as ModelArtifact
from crucible_kitchen.ports._types import ModelInfo as ModelInfo
from crucible_kitchen.ports._types import ModelInput as ModelInput
from crucible_kitchen.ports._types import ModelInputChunk as ModelInputChunk
from crucible_kitchen.ports._types import OptimStepResponse as OptimStepResponse
from crucible_kitchen.ports._types import RegisteredModel as RegisteredModel
from crucible_kitchen.ports._types import SampledSequence as SampledSequence
from crucible_kitchen.ports._types import SampleResponse as SampleResponse
from crucible_kitchen.ports._types import SamplingParams as SamplingParams
from crucible_kitchen.ports._types import SaveStateResponse as SaveStateResponse
from crucible_kitchen.ports._types import (
    SaveWeightsForSamplerResponse as SaveWeightsForSamplerResponse,
)
from crucible_kitchen.ports._types import StepResult as StepResult
from crucible_kitchen.ports._types import StopCondition as StopCondition
from crucible_kitchen.ports._types import StopReason as StopReason
from crucible_kitchen.ports._types import TensorData as TensorData
from crucible_kitchen.ports._types import TensorDType as TensorDType
from crucible_kitchen.ports._types import TokensWithLogprobs as TokensWithLogprobs
from crucible_kitchen.ports._types import TrainOnWhat as TrainOnWhat
from crucible_kitchen.ports._types import Trajectory as Trajectory
from crucible_kitchen.ports._types import Transition as Transition
from crucible_kitchen.ports._types import request_fingerprint as request_fingerprint

__all__ = (
    "CHECKPOINT_DIR",
    "CHECKPOINT_PAYLOAD",
    "FUTURE_DONE",
    "LOSS_FN_INPUTS",
    "PORT_PROTOCOLS",
    "RESERVED_KEY_PREFIX",
    "SAVE_STATE_WITH_PAYLOAD",
    "TOPK_PROMPT_LOGPROBS",
    "AdamParams",
    "BackendFuture",
    "BlobInfo",
    "BlobStore",
    "Capabilities",
    "Capability",
    "CapabilityProvider",
    "CuratedExample",
    "CustomLossFn",
    "CustomLossOutput",
    "DatasetInfo",
    "DatasetRow",
    "DatasetStore",
    "Datum",
    "EncodedTextChunk",
    "Env",
    "EnvGroupBuilder",
    "EvalResult",
    "Evaluator",
    "ExportFormat",
    "FeedbackClient",
    "FeedbackExport",
    "FeedbackTrigger",
    "ForwardBackwardOutput",
    "ImageChunk",
    "LoadStateResponse",
    "LossFnType",
    "Message",
    "MetricPoint",
    "MetricsStore",
    "ModelArtifact",
    "ModelInfo",
    "ModelInput",
    "ModelInputChunk",
    "ModelRegistry",
    "OptimStepResponse",
    "PortName",
    "ReadCheckpointPayload",
    "RegisteredModel",
    "Renderer",
    "SampleResponse",
    "SampledSequence",
    "SamplingClient",
    "SamplingParams",
    "SaveStateResponse",
    "SaveStateWithPayload",
    "SaveWeightsForSamplerResponse",
    "StepResult",
    "StopCondition",
    "StopReason",
    "TensorDType",
    "TensorData",
    "Tokenizer",
    "TokensWithLogprobs",
    "TopKLogprobs",
    "TopKPromptLogprobs",
    "TrainOnWhat",
    "TrainingClient",
    "Trajectory",
    "Transition",
    "capability",
    "check_adapter",
    "check_blob_key",
    "declared_capabilities",
    "request_fingerprint",
)
