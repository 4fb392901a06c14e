"""What every floor shares: error types, the feature dataset's contract and reader, storage
paths, metric names, redaction and quiet loggers.

The bottom floor. May import the standard library, numpy and pyarrow (torch lazily, where a
reader returns tensors); never another kmervae subpackage. `tests/test_layering.py` enforces it.
"""
