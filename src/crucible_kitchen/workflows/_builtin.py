"""The built-in workflows: supervised, reinforcement, preference (DPO), distillation, feedback.

Each is a function of the run's validated config (a recipe's config model) that returns the
workflow tree, so a run only contains, and only requires the ports of, the stages its config
asks for (no evaluator without evaluation, no reference model without a KL penalty). Loop
bounds and cadences are read from the context as the run goes.

Every workflow ends with the ``flush_metrics`` cleanup stage, which runs however the run ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from crucible_kitchen.stages.builtin import (
    PAIRS,
    TRAIN_DATA,
    AnswerExamples,
    ApplyKlPenalty,
    AssembleRlBatch,
    AwaitDistillationSteps,
    AwaitDpoSteps,
    AwaitOffPolicySteps,
    AwaitRlSteps,
    AwaitSupervisedSteps,
    AwaitTopKDistillationSteps,
    BuildEnvGroups,
    BuildEvalDataset,
    BuildEvalPairs,
    BuildPreferenceDataset,
    BuildSupervisedDataset,
    CheckTriggers,
    ChosenExamples,
    ComputeAdvantages,
    ComputePostUpdateKl,
    ComputeReferenceLogprobs,
    CurateFeedback,
    DoRollouts,
    EvaluateNll,
    EvaluatePreferences,
    EvaluateTeacherKl,
    ExportFeedback,
    FlushMetrics,
    InitFromWeights,
    LoadDataset,
    LoadEvalRows,
    LoadFeedbackDataset,
    LoadProblems,
    LoadPrompts,
    ReceiveRollouts,
    RefreshSampler,
    RegisterModel,
    RestoreCheckpoint,
    RunEvaluator,
    SampleReplies,
    SampleStudent,
    SampleTeacher,
    SaveCheckpoint,
    SaveFinalWeights,
    SaveReferenceWeights,
    ScoreTopKWithTeacher,
    ScoreWithTeacher,
    SftWarmup,
    ShuffleEpoch,
    SubmitDistillationStep,
    SubmitDpoStep,
    SubmitOffPolicyStep,
    SubmitRlStep,
    SubmitSupervisedStep,
    SubmitTopKDistillationStep,
    UpdateBaseline,
    batches_this_epoch,
    checkpoint_due,
    configured_batches,
    enough_feedback,
    eval_due,
    final_eval_due,
    initial_eval_due,
    planned_epochs,
    resuming,
    sampler_is_stale,
    starts_fresh,
    starts_from_weights,
    triggers_fired,
    warmup_due,
)

from ._dsl import Node, Workflow, async_loop, conditional, loop, stage

if TYPE_CHECKING:
    from crucible_kitchen.stages import Stage

__all__ = (
    "distillation_workflow",
    "feedback_loop_workflow",
    "preference_workflow",
    "reinforcement_workflow",
    "supervised_workflow",
)

_CLEANUP = (stage("flush_metrics", FlushMetrics),)


@dataclass(frozen=True)
class _Evaluation:
    """What one evaluation of a workflow runs: held-out NLL and sampled replies (supervised),
    the workflow's own held-out stages (``(name, stage)``, set up once by ``setup``) when the
    config's ``flag`` is on, and the evaluator port when the config enables it."""

    nll: bool = False
    flag: str = ""
    held_out: tuple[tuple[str, type[Stage]], ...] = ()
    setup: tuple[tuple[str, type[Stage]], ...] = ()

    def enabled(self, config: Any) -> bool:
        """Whether ``config`` turns the workflow's own held-out stages on."""
        return bool(self.flag and getattr(config, self.flag, False))


_SUPERVISED_EVAL: Final = _Evaluation(nll=True)
_POLICY_EVAL: Final = _Evaluation()
_PREFERENCE_EVAL: Final = _Evaluation(
    flag="eval_pairs",
    held_out=(("evaluate_pairs", EvaluatePreferences),),
    setup=(("build_eval_pairs", BuildEvalPairs),),
)
_DISTILLATION_EVAL: Final = _Evaluation(
    flag="eval_teacher_kl", held_out=(("evaluate_teacher_kl", EvaluateTeacherKl),)
)


def _restore() -> tuple[Node, ...]:
    """Where a resumed run loads its checkpoint: weights, optimizer state, the sampler."""
    return (conditional("resuming", resuming, then=[stage("restore", RestoreCheckpoint)]),)


def _init_from(config: Any) -> list[Node]:
    """Where a run started ``init_from`` other weights loads them (not when it resumes:
    before the restore stage, which consumes the resume marker)."""
    if getattr(config, "init_from", None) is None:
        return []
    return [
        conditional(
            "starts_from_weights", starts_from_weights, then=[stage("init_from", InitFromWeights)]
        )
    ]


def _warmup(config: Any, examples: type[Stage]) -> list[Node]:
    """The supervised warm-up on the ``examples`` stage's data, when configured and due."""
    if getattr(config, "sft_warmup_steps", 0) <= 0:
        return []
    return [
        conditional(
            "warmup_due",
            warmup_due,
            then=[stage("warmup_examples", examples), stage("sft_warmup", SftWarmup)],
        )
    ]


def _reference(config: Any) -> list[Node]:
    """With a KL penalty, save the weights the run starts from as its reference when they
    are not the adapters' initial ones (``init_from``, a warm-up)."""
    moved = getattr(config, "init_from", None) is not None or config.sft_warmup_steps > 0
    if config.kl_penalty_coef <= 0 or not moved:
        return []
    return [
        conditional(
            "starts_fresh", starts_fresh, then=[stage("save_reference", SaveReferenceWeights)]
        )
    ]


def _eval_stages(config: Any, prefix: str, evaluation: _Evaluation) -> list[Node]:
    """One evaluation: held-out NLL and sampled replies (supervised only), the workflow's
    held-out stages, and the evaluator port if enabled."""
    nodes: list[Node] = []
    if evaluation.nll:
        nodes.append(stage(f"{prefix}evaluate_nll", EvaluateNll))
        if config.eval_generations > 0:
            nodes.append(stage(f"{prefix}sample_replies", SampleReplies))
    nodes.extend(
        stage(f"{prefix}{name}", held_out)
        for name, held_out in (evaluation.held_out if evaluation.enabled(config) else ())
    )
    if config.use_evaluator:
        nodes.append(stage(f"{prefix}run_evaluator", RunEvaluator))
    return nodes


def _setup_eval(config: Any, evaluation: _Evaluation) -> list[Node]:
    """Load (and for the NLL, render) the evaluation rows, if the run evaluates at all."""
    if not config.evaluates or not _eval_stages(config, "", evaluation):
        return []
    nodes: list[Node] = [stage("load_eval_rows", LoadEvalRows)]
    if evaluation.nll:
        nodes.append(stage("build_eval_dataset", BuildEvalDataset))
    nodes.extend(
        stage(name, setup)
        for name, setup in (evaluation.setup if evaluation.enabled(config) else ())
    )
    return nodes


def _initial_eval(config: Any, evaluation: _Evaluation) -> list[Node]:
    """The evaluation before the first step, if the config asks for it."""
    nodes = _eval_stages(config, "initial_", evaluation)
    if not getattr(config, "initial_eval", False) or not nodes:
        return []
    return [conditional("initial_eval_due", initial_eval_due, then=nodes)]


def _periodic(
    config: Any, evaluation: _Evaluation, *, drain: Stage | None = None, resumable: bool = False
) -> list[Node]:
    """Evaluation every ``eval_every`` and checkpoints every ``save_every`` steps.

    A pipelined workflow passes its ``drain`` stage: the steps in flight are awaited before
    a checkpoint, so that the checkpoint's weights, metrics and position agree. A
    ``resumable`` workflow also checkpoints when a stop is requested, even with
    ``save_every=0`` (see ``checkpoint_due``).
    """
    nodes: list[Node] = []
    stages = _eval_stages(config, "", evaluation)
    if config.eval_every > 0 and stages:
        nodes.append(conditional("eval_due", eval_due, then=stages))
    if config.save_every > 0 or resumable:
        save: list[Node] = [] if drain is None else [stage("drain_for_checkpoint", drain)]
        save.append(stage("checkpoint", SaveCheckpoint))
        nodes.append(conditional("checkpoint_due", checkpoint_due, then=save))
    return nodes


def _finish(config: Any, evaluation: _Evaluation) -> list[Node]:
    """Final evaluation, final weights, registration."""
    nodes: list[Node] = []
    stages = _eval_stages(config, "final_", evaluation)
    if config.final_eval and stages:
        nodes.append(conditional("final_eval_due", final_eval_due, then=stages))
    nodes.append(stage("save_final", SaveFinalWeights))
    if config.register_model:
        nodes.append(stage("register_model", RegisterModel))
    return nodes


def _supervised_training(config: Any) -> list[Node]:
    """Render, then epochs of pipelined steps, then drain what is still in flight."""
    return [
        stage("build_dataset", BuildSupervisedDataset),
        *_setup_eval(config, _SUPERVISED_EVAL),
        *_initial_eval(config, _SUPERVISED_EVAL),
        loop(
            "epochs",
            planned_epochs,
            stage("shuffle", ShuffleEpoch(TRAIN_DATA)),
            loop(
                "batches",
                batches_this_epoch,
                stage("submit_step", SubmitSupervisedStep),
                stage("await_step", AwaitSupervisedSteps()),
                *_periodic(
                    config,
                    _SUPERVISED_EVAL,
                    drain=AwaitSupervisedSteps(drain=True),
                    resumable=True,
                ),
            ),
        ),
        stage("drain", AwaitSupervisedSteps(drain=True)),
        *_finish(config, _SUPERVISED_EVAL),
    ]


def supervised_workflow(config: Any) -> Workflow:
    """Supervised fine-tuning (a :class:`~crucible_kitchen.recipes.SupervisedConfig`).

    [restore] → load_dataset → build_dataset → [eval rows] → per epoch: shuffle → per batch:
    submit_step (forward_backward + optim_step, unawaited) → await_step (the step
    ``pipeline_depth`` old) → [eval, checkpoint]; then drain → [final eval] → save_final →
    [register_model]; cleanup: flush_metrics.

    Resumable: a checkpoint (after draining the steps in flight) holds weights, optimizer
    state and the context snapshot; a run resumed from it loads them (``restore``), rebuilds
    the data and this epoch's order, and continues with the next batch.
    """
    return Workflow(
        "supervised",
        *_init_from(config),
        *_restore(),
        stage("load_dataset", LoadDataset),
        *_supervised_training(config),
        cleanup=_CLEANUP,
        description="supervised fine-tuning with pipelined cross-entropy steps",
    )


def reinforcement_workflow(config: Any) -> Workflow:
    """GRPO-style RL (a :class:`~crucible_kitchen.recipes.ReinforcementConfig`).

    [init_from] → load_problems → [eval rows] → [supervised warm-up (``sft_warmup_steps``)]
    → [save_reference: the KL penalty's reference is the starting point] → [restore] →
    [initial eval] → the batches. ``mode="sync"`` (default, deterministic,
    on-policy): per batch, refresh_sampler (when
    ``sampler_refresh_every`` calls for it) → build_env_groups → rollouts →
    compute_advantages → assemble_batch → [kl_penalty] → train_step → await_step →
    [post_update_kl (``compute_post_kl``)] → [eval, checkpoint]. ``mode="async"``: rollouts
    are produced from the latest weights while earlier batches train, at most
    ``max_steps_off_policy`` batches ahead (an ``async_loop``); the importance-sampling loss
    corrects for the staleness.

    Resumable in sync mode (a requested stop checkpoints): the
    checkpoint holds the weights, the optimizer state and the sampler's weights path, so
    a resumed run samples from the very weights the uninterrupted one would. Async mode is
    not resumable.
    """
    produce: list[Node] = [
        stage("build_env_groups", BuildEnvGroups),
        stage("rollouts", DoRollouts),
    ]
    train: list[Node] = [
        stage("compute_advantages", ComputeAdvantages),
        stage("assemble_batch", AssembleRlBatch),
    ]
    if config.kl_penalty_coef > 0:
        train.append(stage("kl_penalty", ApplyKlPenalty))
    resumable = config.mode == "sync"
    train += [
        stage("train_step", SubmitRlStep),
        stage("await_step", AwaitRlSteps()),
    ]
    if config.compute_post_kl:
        train.append(stage("post_update_kl", ComputePostUpdateKl))
    train += _periodic(config, _POLICY_EVAL, resumable=resumable)
    body: Node
    if config.mode == "async":
        body = async_loop(
            "batches",
            configured_batches,
            produce=[stage("refresh_sampler", RefreshSampler), *produce],
            consume=[stage("receive_rollouts", ReceiveRollouts), *train],
            buffer=config.max_steps_off_policy,
            output="rollouts",
        )
    else:
        refresh = conditional(
            "sampler_stale", sampler_is_stale, then=[stage("refresh_sampler", RefreshSampler)]
        )
        body = loop("batches", configured_batches, refresh, *produce, *train)
    return Workflow(
        "reinforcement",
        *_init_from(config),
        stage("load_problems", LoadProblems),
        *_setup_eval(config, _POLICY_EVAL),
        *_warmup(config, AnswerExamples),
        *_reference(config),
        *(_restore() if resumable else ()),
        *_initial_eval(config, _POLICY_EVAL),
        body,
        *_finish(config, _POLICY_EVAL),
        cleanup=_CLEANUP,
        description="GRPO-style RL with group-relative advantages",
    )


def preference_workflow(config: Any) -> Workflow:
    """DPO (a :class:`~crucible_kitchen.recipes.PreferenceConfig`).

    load_dataset → build_pairs → reference_logprobs (once, initial weights) → [restore] →
    [eval rows] → per epoch: shuffle → per batch: submit_step (forward_backward_custom with
    the DPO loss + optim_step) → await_step → [eval, checkpoint]; then drain → [final
    eval] → save_final → [register_model]; cleanup: flush_metrics.

    Resumable: the reference logprobs come from the initial weights, so a resumed run
    computes them again before it loads its checkpoint (``restore``).
    """
    return Workflow(
        "preference",
        stage("load_dataset", LoadDataset),
        stage("build_pairs", BuildPreferenceDataset),
        *_init_from(config),
        *_warmup(config, ChosenExamples),
        stage("reference_logprobs", ComputeReferenceLogprobs),
        *_setup_eval(config, _PREFERENCE_EVAL),
        *_restore(),
        *_initial_eval(config, _PREFERENCE_EVAL),
        loop(
            "epochs",
            planned_epochs,
            stage("shuffle", ShuffleEpoch(PAIRS)),
            loop(
                "batches",
                batches_this_epoch,
                stage("submit_step", SubmitDpoStep),
                stage("await_step", AwaitDpoSteps()),
                *_periodic(
                    config, _PREFERENCE_EVAL, drain=AwaitDpoSteps(drain=True), resumable=True
                ),
            ),
        ),
        stage("drain", AwaitDpoSteps(drain=True)),
        *_finish(config, _PREFERENCE_EVAL),
        cleanup=_CLEANUP,
        description="direct preference optimization against the frozen initial weights",
    )


def distillation_workflow(config: Any) -> Workflow:
    """Distillation (a :class:`~crucible_kitchen.recipes.DistillationConfig`).

    ``mode="on_policy"`` (default): [restore] → [init_from] → load_prompts → [eval rows] →
    [initial eval] → per batch: [refresh_sampler] → sample_student → score_teacher (port
    ``teacher_sampling_client``; reverse-KL advantages) → train_step
    (``importance_sampling``) → await_step → [eval, checkpoint]; with ``topk`` > 0,
    score_teacher_topk (the teacher's top-K tokens at each position) → train_step (the
    top-K reverse KL, ``forward_backward_custom``) instead. ``mode="off_policy"``:
    per batch: sample_teacher (the teacher's replies) → train_step (``cross_entropy`` on
    them) → await_step → [eval, checkpoint]. Then [final eval] → save_final →
    [register_model]; cleanup: flush_metrics. The held-out evaluation measures the
    student's reverse KL to the teacher on its own replies (``eval/teacher_kl``).

    Resumable, as the reinforcement workflow in sync mode.
    """
    body: list[Node]
    if getattr(config, "mode", "on_policy") == "off_policy":
        body = [
            stage("sample_teacher", SampleTeacher),
            stage("train_step", SubmitOffPolicyStep),
            stage("await_step", AwaitOffPolicySteps()),
        ]
    else:
        train: list[Node] = (
            [
                stage("score_teacher_topk", ScoreTopKWithTeacher),
                stage("train_step", SubmitTopKDistillationStep),
                stage("await_step", AwaitTopKDistillationSteps()),
            ]
            if getattr(config, "topk", 0) > 0
            else [
                stage("score_teacher", ScoreWithTeacher),
                stage("train_step", SubmitDistillationStep),
                stage("await_step", AwaitDistillationSteps()),
            ]
        )
        body = [
            conditional(
                "sampler_stale", sampler_is_stale, then=[stage("refresh_sampler", RefreshSampler)]
            ),
            stage("sample_student", SampleStudent),
            *train,
        ]
    return Workflow(
        "distillation",
        *_init_from(config),
        *_restore(),
        stage("load_prompts", LoadPrompts),
        *_setup_eval(config, _DISTILLATION_EVAL),
        *_initial_eval(config, _DISTILLATION_EVAL),
        loop(
            "batches",
            configured_batches,
            *body,
            *_periodic(config, _DISTILLATION_EVAL, resumable=True),
        ),
        *_finish(config, _DISTILLATION_EVAL),
        cleanup=_CLEANUP,
        description="distillation from a teacher: on-policy reverse KL or its samples",
    )


def feedback_loop_workflow(config: Any) -> Workflow:
    """Retrain on production feedback (a :class:`~crucible_kitchen.recipes.FeedbackLoopConfig`).

    check_triggers → if a trigger fired: curate → if at least ``min_examples``: [init_from
    (e.g. the deployed model's weights)] → export →
    load_feedback (the export, read back through the dataset store) → supervised training
    (as in :func:`supervised_workflow`) → register_model → update_baseline; cleanup:
    flush_metrics.
    """
    retrain = [
        *_init_from(config),
        stage("export", ExportFeedback),
        stage("load_feedback", LoadFeedbackDataset),
        *_supervised_training(config),
        stage("update_baseline", UpdateBaseline),
    ]
    return Workflow(
        "feedback_loop",
        stage("check_triggers", CheckTriggers),
        conditional(
            "should_retrain",
            triggers_fired,
            then=[
                stage("curate", CurateFeedback),
                conditional("enough_feedback", enough_feedback, then=retrain),
            ],
        ),
        cleanup=_CLEANUP,
        description="retrain a deployment on its curated feedback when a trigger fires",
    )
