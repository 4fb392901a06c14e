"""The project's error types: what a user can cause, reported in one actionable line.

Errors at the edges (files, flags, configs, user data) subclass `KmervaeError`, so the
CLI can print them as one line with exit code 2 instead of a traceback. Internal
invariants use `assert`; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import lzma
import zlib


class KmervaeError(Exception):
    """Base class of every error a user can cause and fix."""


class InputError(KmervaeError, ValueError):
    """User data (a FASTA file, a parquet dataset, a labels table) is malformed."""


class InputNotFoundError(KmervaeError, FileNotFoundError):
    """A path the user gave does not exist or cannot be read."""


class ConfigError(KmervaeError, ValueError):
    """A flag or configuration value is out of range or unknown."""


class OutputError(KmervaeError, OSError):
    """The output location cannot be written (exists already, not writable, ...)."""


class TrainingDiverged(KmervaeError, ArithmeticError):
    """The loss became NaN or infinite: the run stops with the reason instead of training on garbage."""


# What decompressors raise on corrupt or truncated input (isal and zstandard raise
# subclasses of these or OSError): FASTA and BAM readers turn them into one InputError line.
DECOMPRESSION_ERRORS = (EOFError, zlib.error, lzma.LZMAError, OSError)
