"""Using a trained model: pick the best run, export, embed, evaluate, bin.

May import every floor below it (`base`, `features`, `abundance`, `binning`, `core`,
`tracking`); never Ray or `kmervae.distributed`.
"""
