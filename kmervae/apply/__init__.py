"""Using a trained model: pick the best run, export, embed, evaluate, bin.

May import `kmervae.core` and `kmervae.tracking`; never Ray or `kmervae.distributed`.
"""
