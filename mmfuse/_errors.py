"""Exceptions shared across mmfuse."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad config key or value; the message starts with its dotted key.

    ``ConfigError("model.fusion.name", "unknown fusion 'x'")`` or
    ``ConfigError("data.path: /x does not exist")``; ``.key`` holds the dotted key.
    """

    def __init__(self, key_or_message: str, message: str | None = None):
        text = key_or_message if message is None else f"{key_or_message}: {message}"
        super().__init__(text)
        self.key = key_or_message if message is not None else text.split(":", 1)[0]
