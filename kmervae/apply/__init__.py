"""Using a model: describe an architecture, pick the best run, export, embed, evaluate, plot.

May import `kmervae.core` and `kmervae.tracking`; never Ray or `kmervae.distributed`.
"""
