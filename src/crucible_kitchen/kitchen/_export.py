"""Export a finished local torch run's weights for Hugging Face tools."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from crucible_kitchen._files import FINAL_CHECKPOINT, is_hf_model_dir
from crucible_kitchen.errors import RunDirectoryError
from crucible_kitchen.kitchen._run_dir import read_run_record

if TYPE_CHECKING:
    import os

__all__ = ("export_run",)


def export_run(
    run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, peft: bool = False
) -> Path:
    """Write the final weights of a finished local torch run to the new directory ``out_dir``.

    By default a Hugging Face model directory (LoRA merged) that
    ``transformers.AutoModelForCausalLM.from_pretrained`` loads; with ``peft``, the run's LoRA
    adapters in PEFT's format. When the run's ``model`` was a Hugging Face model directory,
    its config, generation config and tokenizer files are carried over (and the PEFT adapter
    names it as its base model). Needs the ``torch`` extra.

    Returns:
        ``out_dir``.

    Raises:
        RunDirectoryError: ``run_dir`` is not a run directory, or has no final checkpoint (the
            run did not finish: resume it first).
        CheckpointError: the checkpoint is damaged; ``out_dir`` exists
            (:class:`~crucible_kitchen.errors.CheckpointExists`); the model cannot be exported
            (:class:`~crucible_kitchen.errors.PretrainedModelError`: no LoRA adapters for
            ``peft``, a source directory that changed since the run).
    """
    from crucible_kitchen.adapters.local_torch import export_hf, export_peft

    record = read_run_record(run_dir)
    checkpoint = Path(run_dir) / FINAL_CHECKPOINT
    if not checkpoint.is_dir():
        raise RunDirectoryError(
            f"{run_dir} has no final checkpoint ({FINAL_CHECKPOINT}): the run did not finish; "
            "resume it first",
            path=str(run_dir),
        )
    model = record.config.get("model")
    source = Path(model) if isinstance(model, str) and is_hf_model_dir(model) else None
    export = export_peft if peft else export_hf
    return export(checkpoint, out_dir, source=source)
