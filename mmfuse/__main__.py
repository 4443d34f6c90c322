"""``python -m mmfuse ...``: the ``mmfuse`` command without an installed entry point (for
example on a machine where the package is only on ``PYTHONPATH``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
