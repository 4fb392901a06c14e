"""Holding back a library's log lines for the length of one call, leaving the process as it was."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """Raise logger `name` to at least `level` inside the block, then restore its own level."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(saved)
