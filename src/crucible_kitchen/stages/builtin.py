"""The built-in stages, for composing workflows of your own from them.

The built-in workflows (:mod:`crucible_kitchen.workflows`) are made of these stages. Each reads
its settings from ``ctx.config`` (a recipe's config model, e.g.
:class:`~crucible_kitchen.recipes.SupervisedConfig`) and keeps what it hands on in
``ctx.state``, as its ``contract`` (a :class:`~crucible_kitchen.stages.StageContract`)
declares; a workflow whose stages leave a key unwritten, or whose config lacks a field, fails
its dry run with every problem listed.

Besides the stages: the custom losses of the preference and distillation steps for
``forward_backward_custom`` (:class:`DpoLoss`, :class:`TopKReverseKlLoss`), the metric an
environment sets on a turn whose reply did not parse (:data:`PARSE_ERROR_MASKED`: the turn is
not trained), the state keys the supervised and preference datasets are kept under
(:data:`TRAIN_DATA`, :data:`PAIRS`), the prefix under which a run's metrics keep the
evaluation before its first step (:data:`INITIAL_PREFIX`), and the functions of the context
that the built-in workflows use as loop bounds (``planned_epochs``, ``configured_batches``,
``batches_this_epoch``) and conditions (``checkpoint_due``, ``eval_due``, ``final_eval_due``,
``initial_eval_due``, ``resuming``, ``starts_from_weights``, ``warmup_due``,
``sampler_is_stale``, ``enough_feedback``, ``triggers_fired``).
"""

from __future__ import annotations

from crucible_kitchen.stages._common import INITIAL_PREFIX as INITIAL_PREFIX
from crucible_kitchen.stages._common import PARSE_ERROR_MASKED as PARSE_ERROR_MASKED
from crucible_kitchen.stages._common import FlushMetrics as FlushMetrics
from crucible_kitchen.stages._common import InitFromWeights as InitFromWeights
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
from crucible_kitchen.stages._common import initial_eval_due as initial_eval_due
from crucible_kitchen.stages._common import planned_epochs as planned_epochs
from crucible_kitchen.stages._common import resuming as resuming
from crucible_kitchen.stages._common import sampler_is_stale as sampler_is_stale
from crucible_kitchen.stages._common import starts_from_weights as starts_from_weights
from crucible_kitchen.stages._distillation import AwaitDistillationSteps as AwaitDistillationSteps
from crucible_kitchen.stages._distillation import AwaitOffPolicySteps as AwaitOffPolicySteps
from crucible_kitchen.stages._distillation import EvaluateTeacherKl as EvaluateTeacherKl
from crucible_kitchen.stages._distillation import LoadPrompts as LoadPrompts
from crucible_kitchen.stages._distillation import SampleStudent as SampleStudent
from crucible_kitchen.stages._distillation import SampleTeacher as SampleTeacher
from crucible_kitchen.stages._distillation import ScoreWithTeacher as ScoreWithTeacher
from crucible_kitchen.stages._distillation import SubmitDistillationStep as SubmitDistillationStep
from crucible_kitchen.stages._distillation import SubmitOffPolicyStep as SubmitOffPolicyStep
from crucible_kitchen.stages._distillation import TopKReverseKlLoss as TopKReverseKlLoss
from crucible_kitchen.stages._feedback import CheckTriggers as CheckTriggers
from crucible_kitchen.stages._feedback import CurateFeedback as CurateFeedback
from crucible_kitchen.stages._feedback import ExportFeedback as ExportFeedback
from crucible_kitchen.stages._feedback import LoadFeedbackDataset as LoadFeedbackDataset
from crucible_kitchen.stages._feedback import UpdateBaseline as UpdateBaseline
from crucible_kitchen.stages._feedback import enough_feedback as enough_feedback
from crucible_kitchen.stages._feedback import triggers_fired as triggers_fired
from crucible_kitchen.stages._preference import PAIRS as PAIRS
from crucible_kitchen.stages._preference import AwaitDpoSteps as AwaitDpoSteps
from crucible_kitchen.stages._preference import BuildEvalPairs as BuildEvalPairs
from crucible_kitchen.stages._preference import BuildPreferenceDataset as BuildPreferenceDataset
from crucible_kitchen.stages._preference import ComputeReferenceLogprobs as ComputeReferenceLogprobs
from crucible_kitchen.stages._preference import DpoLoss as DpoLoss
from crucible_kitchen.stages._preference import EvaluatePreferences as EvaluatePreferences
from crucible_kitchen.stages._preference import SubmitDpoStep as SubmitDpoStep
from crucible_kitchen.stages._reinforcement import ApplyKlPenalty as ApplyKlPenalty
from crucible_kitchen.stages._reinforcement import AssembleRlBatch as AssembleRlBatch
from crucible_kitchen.stages._reinforcement import AwaitRlSteps as AwaitRlSteps
from crucible_kitchen.stages._reinforcement import BuildEnvGroups as BuildEnvGroups
from crucible_kitchen.stages._reinforcement import ComputeAdvantages as ComputeAdvantages
from crucible_kitchen.stages._reinforcement import ComputePostUpdateKl as ComputePostUpdateKl
from crucible_kitchen.stages._reinforcement import DoRollouts as DoRollouts
from crucible_kitchen.stages._reinforcement import LoadProblems as LoadProblems
from crucible_kitchen.stages._reinforcement import ReceiveRollouts as ReceiveRollouts
from crucible_kitchen.stages._reinforcement import SubmitRlStep as SubmitRlStep
from crucible_kitchen.stages._supervised import TRAIN_DATA as TRAIN_DATA
from crucible_kitchen.stages._supervised import AwaitSupervisedSteps as AwaitSupervisedSteps
from crucible_kitchen.stages._supervised import BuildEvalDataset as BuildEvalDataset
from crucible_kitchen.stages._supervised import BuildSupervisedDataset as BuildSupervisedDataset
from crucible_kitchen.stages._supervised import EvaluateNll as EvaluateNll
from crucible_kitchen.stages._supervised import SampleReplies as SampleReplies
from crucible_kitchen.stages._supervised import SubmitSupervisedStep as SubmitSupervisedStep
from crucible_kitchen.stages._warmup import AnswerExamples as AnswerExamples
from crucible_kitchen.stages._warmup import ChosenExamples as ChosenExamples
from crucible_kitchen.stages._warmup import SftWarmup as SftWarmup
from crucible_kitchen.stages._warmup import warmup_due as warmup_due

__all__ = (
    "INITIAL_PREFIX",
    "PAIRS",
    "PARSE_ERROR_MASKED",
    "TRAIN_DATA",
    "AnswerExamples",
    "ApplyKlPenalty",
    "AssembleRlBatch",
    "AwaitDistillationSteps",
    "AwaitDpoSteps",
    "AwaitOffPolicySteps",
    "AwaitRlSteps",
    "AwaitSupervisedSteps",
    "BuildEnvGroups",
    "BuildEvalDataset",
    "BuildEvalPairs",
    "BuildPreferenceDataset",
    "BuildSupervisedDataset",
    "CheckTriggers",
    "ChosenExamples",
    "ComputeAdvantages",
    "ComputePostUpdateKl",
    "ComputeReferenceLogprobs",
    "CurateFeedback",
    "DoRollouts",
    "DpoLoss",
    "EvaluateNll",
    "EvaluatePreferences",
    "EvaluateTeacherKl",
    "ExportFeedback",
    "FlushMetrics",
    "InitFromWeights",
    "LoadDataset",
    "LoadEvalRows",
    "LoadFeedbackDataset",
    "LoadProblems",
    "LoadPrompts",
    "ReceiveRollouts",
    "RefreshSampler",
    "RegisterModel",
    "RestoreCheckpoint",
    "RunEvaluator",
    "SampleReplies",
    "SampleStudent",
    "SampleTeacher",
    "SaveCheckpoint",
    "SaveFinalWeights",
    "ScoreWithTeacher",
    "SftWarmup",
    "ShuffleEpoch",
    "SubmitDistillationStep",
    "SubmitDpoStep",
    "SubmitOffPolicyStep",
    "SubmitRlStep",
    "SubmitSupervisedStep",
    "TopKReverseKlLoss",
    "UpdateBaseline",
    "batches_this_epoch",
    "checkpoint_due",
    "configured_batches",
    "enough_feedback",
    "eval_due",
    "final_eval_due",
    "initial_eval_due",
    "planned_epochs",
    "resuming",
    "sampler_is_stale",
    "starts_from_weights",
    "triggers_fired",
    "warmup_due",
)
