"""The one place the training side builds task models (tests may patch ``build_model`` here)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """``mmfuse.models.build_model(config)``, imported when first needed."""
    try:
        from mmfuse.models import build_model as build
    except ImportError as err:
        raise ImportError(f"mmfuse.models is not available, so no task model can be built ({err})") from err
    return build(dict(config))
