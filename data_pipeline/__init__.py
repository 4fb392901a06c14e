"""FASTA -> canonical k-mer feature parquet (numpy, pyarrow and numba only; never torch)."""
