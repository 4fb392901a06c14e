"""kmervae: train and sweep branched VAEs on canonical k-mer profiles of DNA contigs.

Importing the package is cheap: it pulls in neither torch nor ray; each module
imports what it needs.
"""

__version__ = "0.1.0"
