"""The model and its training: configs, the branched VAE, its loss and metrics, the data
feeders, the run set-up, the epoch loop and checkpoints.

Runs on a bare GPU host. Modules here import the standard library, torch, numpy, pyarrow,
`kmervae.base` and `kmervae.binning` (validation counts near-complete bins); matplotlib, yaml and
scikit-learn (k-means ARI) lazily. Never Ray, MLflow or Optuna. `tests/test_layering.py` enforces it.
"""
