"""The names of the DPO loss variants (torch-free, so configs and stages can use them)."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ("DPO_LOSS_TYPES", "DPOLossType")

DPOLossType = Literal["sigmoid", "ipo", "hinge"]
"""The DPO loss variants, with TRL's names (``DPOConfig.loss_type``)."""

DPO_LOSS_TYPES: tuple[DPOLossType, ...] = get_args(DPOLossType)
