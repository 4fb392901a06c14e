"""Binning and its quality: the neighbour graph and its clusterers, reclustering inside bins,
marker genes (found in an assembly, read from a table) and completeness estimates.

May import `kmervae.base` and `kmervae.features` (to read the assembly's contigs), numpy and
pyarrow; igraph, faiss, scikit-learn, torch, pyrodigal and pyhmmer lazily, inside the functions
that need them (a bare GPU host lacks some), so the model core may import it.
"""
