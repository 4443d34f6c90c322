"""Fusion architecture search (MFAS) and multilayer fusion (CentralNet).

- :mod:`mmfuse.search.centralnet`: the ``centralnet`` fusion (registered; imports only torch).
- :mod:`mmfuse.search.backbones`: unimodal backbones that expose their hidden layers.
- :mod:`mmfuse.search.space`: the MFAS search space, its enumeration and encoding.
- :mod:`mmfuse.search.surrogate`: the LSTM surrogate (configuration -> accuracy).
- :mod:`mmfuse.search.mfas`: fusion networks, the progressive search, its log.
- :mod:`mmfuse.search.tasks`: the tasks and the config-driven run behind ``mmfuse search``.

Only :mod:`centralnet` is imported here (it registers the fusion); import the others by name.
"""

from .centralnet import CentralNet, CentralNetOutput, centralnet_loss

__all__ = ["CentralNet", "CentralNetOutput", "centralnet_loss"]
