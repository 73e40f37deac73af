"""Local PyTorch backend: a small decoder-only transformer trained and sampled in-process.

The engine lives in private modules (``_config``, ``_model``, ``_lora``, ``_sampling``,
``_optim``, ``_checkpoint``) that import torch. This ``__init__`` must stay light: importing the
adapter package never imports torch; only the modules that do the work do.
"""

from __future__ import annotations
