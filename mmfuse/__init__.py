"""mmfuse: multimodal fusion methods under one interface.

    >>> import mmfuse, torch
    >>> f = mmfuse.create_fusion("gmu", in_dims=(2048, 300), out_dim=512)
    >>> f(torch.randn(8, 2048), torch.randn(8, 300)).shape
    torch.Size([8, 512])

The fusion core (this package's registry, ``functional``, ``layers`` and ``fusions``) imports
only torch.
"""

from . import attention, fusions, search  # noqa: F401  (registers the fusions)
from ._registry import FusionInfo, create_fusion, fusion_info, list_fusions, register_fusion, select_fusions

__version__ = "0.1.0"


def load(path, **kwargs):
    """A trained task model from a folder of ``model.safetensors`` + ``config.json``.

    Never unpickles: the weights are safetensors, the config JSON. See
    :func:`mmfuse.train.checkpoint.load` for the options.
    """
    from .train.checkpoint import load as _load

    return _load(path, **kwargs)


__all__ = [
    "FusionInfo",
    "create_fusion",
    "fusion_info",
    "list_fusions",
    "select_fusions",
    "register_fusion",
    "load",
    "__version__",
]
