"""Sequences to features: FASTA -> canonical 7/4/3-mer, GC and length features in parquet,
with the contigs' depths and labels joined on (`kmervae featurize`).

May import `kmervae.base` and `kmervae.abundance` (whose depth tables it joins), numpy,
pyarrow, numba, dnaio, xopen and tqdm; never torch.
"""
