"""Reads to depths: the BAM/SAM/CRAM scan, the depth-table formats, and the table that
`kmervae abundance` builds from many BAM files.

May import `kmervae.base`, numpy, pyarrow, numba, xopen and pysam; never torch.
"""
