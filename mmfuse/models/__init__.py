"""Task models: encoders (images, text, features) + any registered fusion + a head.

    >>> from mmfuse.models import build_model
    >>> model = build_model(config)          # the ``model:`` section of a YAML config, or all of it
    >>> out = model(batch)                   # ModelOutput(logits [B, num_outputs], attention)

See :mod:`mmfuse.models.task` for the config schema and :mod:`mmfuse.models.encoders` for the
encoders and their keys. Config problems raise :class:`ConfigError` (a ``ValueError``) whose
message starts with the dotted key, e.g. ``model.fusion.name: unknown fusion 'mbl'; closest: mlb``.
"""

from .config import ConfigError
from .encoders import ENCODERS, Encoded, Encoder, load_sentence_model, masked_mean
from .task import TASK_KINDS, ModelOutput, TaskModel, build_model, normalize_model_config

__all__ = [
    "ConfigError",
    "ENCODERS",
    "Encoded",
    "Encoder",
    "ModelOutput",
    "TASK_KINDS",
    "TaskModel",
    "build_model",
    "load_sentence_model",
    "masked_mean",
    "normalize_model_config",
]
