"""The model core: the feature contract, configs, model, loss, metrics, data, epoch loop, checkpoints.

Runs on a bare GPU host. Modules here import only the standard library, torch, numpy,
pyarrow and each other (matplotlib, where used, lazily and optionally); never Ray,
MLflow, Optuna or another kmervae subpackage. `tests/test_layering.py` enforces it.
"""
