"""Reading feature datasets back: validation of foreign, corrupt and incomplete datasets."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.featurize import FeaturizeSettings, featurize
from kmervae.errors import InputError, InputNotFoundError
from kmervae.feature_table import MANIFEST_NAME, FeatureTable, dataset_files
from tests.conftest import write_fasta


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    records = [(f"r{i}", "".join(rng.choice(list("ACGT"), 1500))) for i in range(5)]
    out = tmp_path / "ds"
    featurize([write_fasta(tmp_path / "in.fa", records)], out, FeaturizeSettings(rows_per_file=2, row_group_size=1))
    return out


def test_reads_a_folder_or_one_file(dataset):
    table = FeatureTable.from_parquet(dataset)
    assert len(table) == 5 and table.kmer7.shape == (5, 8192) and table.labels is None
    assert table.length.dtype == np.int64 and table.gc.dtype == np.float32
    single = FeatureTable.from_parquet(dataset / "part-00001.parquet")
    assert list(single.contig_ids) == ["r2", "r3"]
    np.testing.assert_array_equal(single.kmer4, table.kmer4[2:4])


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such feature dataset"):
        dataset_files(tmp_path / "nope")
    with pytest.raises(InputError, match="no parquet files in this folder"):
        dataset_files(tmp_path)


def test_a_file_missing_from_the_manifest_is_reported(dataset):
    (dataset / "part-00001.parquet").unlink()
    with pytest.raises(InputError, match="incomplete dataset, missing part-00001.parquet"):
        dataset_files(dataset)


def test_row_count_mismatch_is_reported(dataset):
    manifest = json.loads((dataset / MANIFEST_NAME).read_text())
    manifest["files"][0]["rows"] = 7
    (dataset / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="files hold 5 rows, the manifest says 10"):
        dataset_files(dataset)


def test_foreign_and_corrupt_files(tmp_path, dataset):
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"contig_id": ["a"], "x": [1]}), foreign)
    with pytest.raises(InputError, match="not a kmervae feature file"):
        dataset_files(foreign)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="not a readable parquet file"):
        dataset_files(garbage)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes((dataset / "part-00000.parquet").read_bytes()[:-100])
    with pytest.raises(InputError, match="not a readable parquet file"):
        dataset_files(truncated)


def test_constructor_checks_shapes_and_dtypes():
    ok = dict(
        contig_ids=np.array(["a"], dtype=object),
        length=np.array([10], dtype=np.int64),
        gc=np.array([0.5], dtype=np.float32),
        kmer7=np.zeros((1, 8192), np.uint16),
        kmer4=np.zeros((1, 136), np.uint16),
        kmer3=np.zeros((1, 32), np.uint16),
    )
    FeatureTable(**ok)
    with pytest.raises(ValueError, match=r"kmer4 must be unsigned of shape \(1, 136\)"):
        FeatureTable(**{**ok, "kmer4": np.zeros((1, 135), np.uint16)})
    with pytest.raises(ValueError, match="kmer7 must be unsigned"):
        FeatureTable(**{**ok, "kmer7": np.zeros((1, 8192), np.int16)})
    with pytest.raises(ValueError, match="gc must be float32"):
        FeatureTable(**{**ok, "gc": np.array([0.5])})
