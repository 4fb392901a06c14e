"""The deterministic train/validation split and count batches."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from kmervae.base.errors import ConfigError, InputError
from kmervae.base.feature_contract import id_hash
from kmervae.base.feature_table import FeatureTable
from kmervae.core.config import DataConfig
from kmervae.core.data import held_out_labels, link_keys, load_splits, split_hash, split_mask


def test_split_is_stable_salted_and_close_to_the_fraction():
    ids = [f"contig_{i}" for i in range(20_000)]
    mask = split_mask(ids, DataConfig(val_fraction=0.1), validation=True)
    assert abs(mask.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(mask[::-1], split_mask(ids[::-1], DataConfig(val_fraction=0.1), validation=True))
    other = split_mask(ids, DataConfig(val_fraction=0.1, split_salt="other"), validation=True)
    assert (mask != other).any()
    # The documented definition (salted 64-bit BLAKE2b): changing it would silently move
    # contigs between training and validation in resumed runs and sweeps.
    digest = hashlib.blake2b(b"kmervae\x00NC_000913.3:1-5000", digest_size=8).digest()
    assert split_hash(["NC_000913.3:1-5000"], "kmervae")[0] == int.from_bytes(digest, "little") / 2**64


def test_load_splits_is_disjoint_and_complete(example_features):
    table = FeatureTable.from_parquet(example_features)
    train, val = load_splits(example_features, DataConfig())
    assert len(train) + len(val) == len(table)
    assert not set(train.contig_ids) & set(val.contig_ids)
    assert set(val.contig_ids) == set(table.contig_ids[split_mask(table.contig_ids, DataConfig(), validation=True)])
    assert train.batch.kmer7.dtype == torch.uint8 and train.codes is not None


def test_max_samples_subsamples_both_splits(example_features):
    train, val = load_splits(example_features, DataConfig(max_samples=400))
    assert len(train) + len(val) == 400 and 10 <= len(val) <= 80


def test_a_subsample_decodes_its_own_rows_and_codes_labels_against_the_whole_dataset(example_features):
    """Only the kept rows are decoded (a million contigs' counts would not fit in memory): they
    are the rows of the whole table with those ids, and a label the subsample lacks still has
    its code, as the Ray engine codes labels against the dataset's vocabulary."""
    whole = FeatureTable.from_parquet(example_features)
    vocabulary = sorted(set(whole.labels))
    train, val = load_splits(example_features, DataConfig(max_samples=8, val_fraction=0.5))
    position = {cid: i for i, cid in enumerate(whole.contig_ids)}
    for part in (train, val):
        rows = np.array([position[cid] for cid in part.contig_ids])
        assert np.array_equal(part.batch.kmer7.numpy(), whole.kmer7[rows])
        assert np.array_equal(part.batch.length.numpy(), whole.length[rows])
        assert [vocabulary[c] for c in part.codes.tolist()] == list(whole.labels[rows])
    assert len({*train.codes.tolist(), *val.codes.tolist()}) < len(vocabulary)  # some genome is absent


def test_batches_cover_everything_once_and_shuffle_by_seed(example_features):
    train, _ = load_splits(example_features, DataConfig(max_samples=300))
    seen = torch.cat([b.length for b in train.batches(64)])
    torch.testing.assert_close(seen, train.batch.length)
    a = torch.cat([b.gc for b in train.batches(64, generator=torch.Generator().manual_seed(1))])
    b = torch.cat([b.gc for b in train.batches(64, generator=torch.Generator().manual_seed(1))])
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, train.batch.gc)
    sizes = [len(b.length) for b in train.batches(len(train) - 1, drop_singleton=True)]
    assert sizes == [len(train) - 1]


def test_too_few_contigs_is_an_error(tmp_path):
    from kmervae.features.featurize import featurize
    from tests.conftest import write_fasta

    write_fasta(tmp_path / "a.fa", [("a", "ACGT" * 300)])
    featurize([tmp_path / "a.fa"], tmp_path / "f")
    with pytest.raises(InputError, match="1 contigs give .* for training and .* for validation"):
        load_splits(tmp_path / "f", DataConfig())


def test_resident_batches_cover_every_row_once_and_keep_counts_compact():
    from kmervae.core.data import CountBatch, TensorData, use_resident

    n = 103
    counts = torch.arange(n * 4, dtype=torch.int64).reshape(n, 4).to(torch.uint16)
    data = TensorData(CountBatch(torch.arange(n), torch.zeros(n), counts, counts[:, :2], counts[:, :1]))
    moved = data.to(torch.device("cpu"))
    assert moved.batch.kmer7.dtype == torch.uint16  # gathered by index on this device: kept as is
    generator = torch.Generator().manual_seed(3)
    batches = list(moved.batches(10, generator=generator, drop_last=True))
    assert len(batches) == 10 and all(len(b.length) == 10 for b in batches)  # the short tail is dropped
    seen = torch.cat([b.length for b in batches])
    assert len(set(seen.tolist())) == 100  # a permutation: no row twice
    assert all(torch.equal(b.kmer7.long()[:, 0], b.length * 4) for b in batches)  # rows stay aligned
    assert not use_resident("auto", torch.device("cpu"), 1)  # auto: CUDA only
    assert use_resident("on", torch.device("cpu"), 1) and not use_resident("off", torch.device("cpu"), 1)


def test_the_binners_split_trains_and_validates_on_every_contig(example_features):
    train, val = load_splits(example_features, DataConfig(val_split="all"))
    ids = list(FeatureTable.from_parquet(example_features).contig_ids)
    assert list(train.contig_ids) == list(val.contig_ids) == ids
    sub, sub_val = load_splits(example_features, DataConfig(val_split="all", max_samples=20))
    assert list(sub.contig_ids) == list(sub_val.contig_ids) and len(sub) == 20  # the subsample still applies


def test_genome_split_holds_out_whole_labels(example_features):
    cfg = DataConfig(val_split="genome", val_fraction=0.2)
    train, val = load_splits(example_features, cfg)
    table = FeatureTable.from_parquet(example_features)
    by_id = dict(zip(table.contig_ids, table.labels, strict=True))
    train_labels = {by_id[c] for c in train.contig_ids}
    val_labels = {by_id[c] for c in val.contig_ids}
    assert not train_labels & val_labels  # no genome on both sides
    assert len(val_labels) >= 2 and train_labels | val_labels == set(table.labels)
    # Every contig of a held-out genome validates; the choice is stable and depends on the salt only.
    assert len(val) == sum(label in val_labels for label in table.labels)
    again, _ = load_splits(example_features, cfg)
    assert list(again.contig_ids) == list(train.contig_ids)
    vocabulary = sorted(set(table.labels))
    assert held_out_labels(vocabulary, cfg) == frozenset(val_labels)
    assert held_out_labels(vocabulary[::-1], cfg) == frozenset(val_labels)  # order of discovery does not matter


def test_genome_split_takes_labels_below_the_fraction_and_at_least_two():
    names = [f"genome_{i}" for i in range(200)]
    hashes = dict(zip(names, split_hash(names, "kmervae:genome"), strict=True))
    held = held_out_labels(names, DataConfig(val_split="genome", val_fraction=0.1))
    assert held == {n for n in names if hashes[n] < 0.1}  # the documented rule
    assert len(held_out_labels(names[:3], DataConfig(val_split="genome", val_fraction=0.01))) == 2
    with pytest.raises(ConfigError, match="data.val_split=genome needs at least 3 labels, the data has 2"):
        held_out_labels(names[:2], DataConfig(val_split="genome"))
    assert held_out_labels(names, DataConfig()) == frozenset()  # contig split: no genome held out


def test_link_keys_code_a_record_by_hash_and_a_fragment_by_start():
    keys = link_keys(["a:1-5000", "b:1-5000", "a:5001-10000", "unfragmented"])
    assert keys[0, 0] == keys[2, 0] != keys[1, 0]  # one record, one code; another record, another
    assert keys[:3, 0].min() >= 0 and keys[:3, 1].tolist() == [1, 1, 5001]
    assert keys[3, :2].tolist() == [-1, -1]  # no coordinates: no must-link
    assert (link_keys(["a:1-5000"]) == keys[:1]).all()  # a hash, the same in every process
    # The last column is the contig's own id hash, whatever its form (markers are matched by it).
    assert len(set(keys[:, 2].tolist())) == 4 and keys[:, 2].min() >= 0
    assert keys[3, 2] == id_hash("unfragmented") and keys[0, 0] == id_hash("a")
