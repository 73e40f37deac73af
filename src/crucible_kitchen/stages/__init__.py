"""Stages: the Stage contract, the Context a stage works on, and the built-in stages.

Stages talk to backends only through ports (``ctx.port(name)``); they never import adapters.
The built-in stages read their settings from ``ctx.config`` (a recipe's config model) and
keep everything they hand on in ``ctx.state``, replacing values rather than mutating them;
each declares what it reads and writes in its :class:`StageContract`.
"""

from __future__ import annotations

from crucible_kitchen.stages._common import PARSE_ERROR_MASKED as PARSE_ERROR_MASKED
from crucible_kitchen.stages._common import RESUME_FROM as RESUME_FROM
from crucible_kitchen.stages._common import AwaitTrainingSteps as AwaitTrainingSteps
from crucible_kitchen.stages._common import BuiltinStage as BuiltinStage
from crucible_kitchen.stages._common import FlushMetrics as FlushMetrics
from crucible_kitchen.stages._common import InFlightStep as InFlightStep
from crucible_kitchen.stages._common import LoadDataset as LoadDataset
from crucible_kitchen.stages._common import LoadEvalRows as LoadEvalRows
from crucible_kitchen.stages._common import RefreshSampler as RefreshSampler
from crucible_kitchen.stages._common import RegisterModel as RegisterModel
from crucible_kitchen.stages._common import RestoreCheckpoint as RestoreCheckpoint
from crucible_kitchen.stages._common import RunEvaluator as RunEvaluator
from crucible_kitchen.stages._common import SaveCheckpoint as SaveCheckpoint
from crucible_kitchen.stages._common import SaveFinalWeights as SaveFinalWeights
from crucible_kitchen.stages._common import ShuffleEpoch as ShuffleEpoch
from crucible_kitchen.stages._common import batches_this_epoch as batches_this_epoch
from crucible_kitchen.stages._common import checkpoint_due as checkpoint_due
from crucible_kitchen.stages._common import configured_batches as configured_batches
from crucible_kitchen.stages._common import eval_due as eval_due
from crucible_kitchen.stages._common import final_eval_due as final_eval_due
from crucible_kitchen.stages._common import next_token_datum as next_token_datum
from crucible_kitchen.stages._common import planned_epochs as planned_epochs
from crucible_kitchen.stages._common import resuming as resuming
from crucible_kitchen.stages._common import rl_datums as rl_datums
from crucible_kitchen.stages._common import row_messages as row_messages
from crucible_kitchen.stages._common import sampler_is_stale as sampler_is_stale
from crucible_kitchen.stages._common import snapshot_from_checkpoint as snapshot_from_checkpoint
from crucible_kitchen.stages._common import split_rows as split_rows
from crucible_kitchen.stages._context import Context as Context
from crucible_kitchen.stages._context import ContextSnapshot as ContextSnapshot
from crucible_kitchen.stages._context import RunInfo as RunInfo
from crucible_kitchen.stages._contract import StageContract as StageContract
from crucible_kitchen.stages._contract import StateKey as StateKey
from crucible_kitchen.stages._contract import config_problems as config_problems
from crucible_kitchen.stages._contract import contract_of as contract_of
from crucible_kitchen.stages._contract import declares as declares
from crucible_kitchen.stages._contract import state_problems as state_problems
from crucible_kitchen.stages._distillation import AwaitDistillationSteps as AwaitDistillationSteps
from crucible_kitchen.stages._distillation import LoadPrompts as LoadPrompts
from crucible_kitchen.stages._distillation import SampleStudent as SampleStudent
from crucible_kitchen.stages._distillation import ScoreWithTeacher as ScoreWithTeacher
from crucible_kitchen.stages._distillation import SubmitDistillationStep as SubmitDistillationStep
from crucible_kitchen.stages._distillation import TopKReverseKlLoss as TopKReverseKlLoss
from crucible_kitchen.stages._faults import current_stage_context as current_stage_context
from crucible_kitchen.stages._faults import current_stage_kill as current_stage_kill
from crucible_kitchen.stages._feedback import CheckTriggers as CheckTriggers
from crucible_kitchen.stages._feedback import CurateFeedback as CurateFeedback
from crucible_kitchen.stages._feedback import ExportFeedback as ExportFeedback
from crucible_kitchen.stages._feedback import LoadFeedbackDataset as LoadFeedbackDataset
from crucible_kitchen.stages._feedback import UpdateBaseline as UpdateBaseline
from crucible_kitchen.stages._feedback import enough_feedback as enough_feedback
from crucible_kitchen.stages._feedback import triggers_fired as triggers_fired
from crucible_kitchen.stages._preference import PAIRS as PAIRS
from crucible_kitchen.stages._preference import AwaitDpoSteps as AwaitDpoSteps
from crucible_kitchen.stages._preference import BuildPreferenceDataset as BuildPreferenceDataset
from crucible_kitchen.stages._preference import ComputeReferenceLogprobs as ComputeReferenceLogprobs
from crucible_kitchen.stages._preference import DpoLoss as DpoLoss
from crucible_kitchen.stages._preference import SubmitDpoStep as SubmitDpoStep
from crucible_kitchen.stages._reinforcement import ApplyKlPenalty as ApplyKlPenalty
from crucible_kitchen.stages._reinforcement import AssembleRlBatch as AssembleRlBatch
from crucible_kitchen.stages._reinforcement import AwaitRlSteps as AwaitRlSteps
from crucible_kitchen.stages._reinforcement import BuildEnvGroups as BuildEnvGroups
from crucible_kitchen.stages._reinforcement import ComputeAdvantages as ComputeAdvantages
from crucible_kitchen.stages._reinforcement import ComputePostUpdateKl as ComputePostUpdateKl
from crucible_kitchen.stages._reinforcement import DoRollouts as DoRollouts
from crucible_kitchen.stages._reinforcement import LoadProblems as LoadProblems
from crucible_kitchen.stages._reinforcement import Problem as Problem
from crucible_kitchen.stages._reinforcement import ProblemEnv as ProblemEnv
from crucible_kitchen.stages._reinforcement import ProblemGroupBuilder as ProblemGroupBuilder
from crucible_kitchen.stages._reinforcement import ReceiveRollouts as ReceiveRollouts
from crucible_kitchen.stages._reinforcement import RlBatch as RlBatch
from crucible_kitchen.stages._reinforcement import RolloutBatch as RolloutBatch
from crucible_kitchen.stages._reinforcement import RolloutGroup as RolloutGroup
from crucible_kitchen.stages._reinforcement import SubmitRlStep as SubmitRlStep
from crucible_kitchen.stages._stage import FunctionStage as FunctionStage
from crucible_kitchen.stages._stage import RetryPolicy as RetryPolicy
from crucible_kitchen.stages._stage import Stage as Stage
from crucible_kitchen.stages._stage import as_stage as as_stage
from crucible_kitchen.stages._supervised import TRAIN_DATA as TRAIN_DATA
from crucible_kitchen.stages._supervised import AwaitSupervisedSteps as AwaitSupervisedSteps
from crucible_kitchen.stages._supervised import BuildEvalDataset as BuildEvalDataset
from crucible_kitchen.stages._supervised import BuildSupervisedDataset as BuildSupervisedDataset
from crucible_kitchen.stages._supervised import EvaluateNll as EvaluateNll
from crucible_kitchen.stages._supervised import SampleReplies as SampleReplies
from crucible_kitchen.stages._supervised import SubmitSupervisedStep as SubmitSupervisedStep
from crucible_kitchen.training import derive_seed as derive_seed

__all__ = (
    "PAIRS",
    "PARSE_ERROR_MASKED",
    "RESUME_FROM",
    "TRAIN_DATA",
    "ApplyKlPenalty",
    "AssembleRlBatch",
    "AwaitDistillationSteps",
    "AwaitDpoSteps",
    "AwaitRlSteps",
    "AwaitSupervisedSteps",
    "AwaitTrainingSteps",
    "BuildEnvGroups",
    "BuildEvalDataset",
    "BuildPreferenceDataset",
    "BuildSupervisedDataset",
    "BuiltinStage",
    "CheckTriggers",
    "ComputeAdvantages",
    "ComputePostUpdateKl",
    "ComputeReferenceLogprobs",
    "Context",
    "ContextSnapshot",
    "CurateFeedback",
    "DoRollouts",
    "DpoLoss",
    "EvaluateNll",
    "ExportFeedback",
    "FlushMetrics",
    "FunctionStage",
    "InFlightStep",
    "LoadDataset",
    "LoadEvalRows",
    "LoadFeedbackDataset",
    "LoadProblems",
    "LoadPrompts",
    "Problem",
    "ProblemEnv",
    "ProblemGroupBuilder",
    "ReceiveRollouts",
    "RefreshSampler",
    "RegisterModel",
    "RestoreCheckpoint",
    "RetryPolicy",
    "RlBatch",
    "RolloutBatch",
    "RolloutGroup",
    "RunEvaluator",
    "RunInfo",
    "SampleReplies",
    "SampleStudent",
    "SaveCheckpoint",
    "SaveFinalWeights",
    "ScoreWithTeacher",
    "ShuffleEpoch",
    "Stage",
    "StageContract",
    "StateKey",
    "SubmitDistillationStep",
    "SubmitDpoStep",
    "SubmitRlStep",
    "SubmitSupervisedStep",
    "TopKReverseKlLoss",
    "UpdateBaseline",
    "as_stage",
    "batches_this_epoch",
    "checkpoint_due",
    "config_problems",
    "configured_batches",
    "contract_of",
    "current_stage_context",
    "current_stage_kill",
    "declares",
    "derive_seed",
    "enough_feedback",
    "eval_due",
    "final_eval_due",
    "next_token_datum",
    "planned_epochs",
    "resuming",
    "rl_datums",
    "row_messages",
    "sampler_is_stale",
    "snapshot_from_checkpoint",
    "split_rows",
    "state_problems",
    "triggers_fired",
)
