"""Reading feature datasets back: validation of foreign, corrupt and incomplete datasets."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmervae.base.errors import InputError, InputNotFoundError
from kmervae.base.feature_contract import MANIFEST_NAME
from kmervae.base.feature_table import FeatureTable, dataset_files
from kmervae.features.featurize import FeaturizeSettings, featurize
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


def _rewrite(part, change_table=None, change_meta=None):
    """Rewrite a feature file with its table or its schema metadata changed."""
    table = pq.read_table(part)
    meta = dict(table.schema.metadata)
    if change_meta:
        meta = change_meta(meta)
    if change_table:
        table = change_table(table)
    pq.write_table(table.replace_schema_metadata(meta), part)


def _set_column(name, values, type_=None):
    def change(table):
        i = table.schema.get_field_index(name)
        return table.set_column(
            i,
            table.schema.field(i).with_type(type_ or table.schema.field(i).type),
            pa.array(values, type_ or table.schema.field(i).type),
        )

    return change


def _set_meta(key, value):
    return lambda meta: {**meta, key.encode(): value.encode()}


@pytest.mark.parametrize(
    "change_table, change_meta, message",
    [
        (None, _set_meta("kmervae.schema_version", "3"), "feature schema version 3, this kmervae reads versions 1, 2"),
        (
            None,
            _set_meta("kmervae.count_dtypes", '{"kmer3": "int16", "kmer4": "uint8", "kmer7": "uint8"}'),
            "column kmer3 has unsupported count dtype 'int16'",
        ),  # signed (negative) counts are refused
        (None, _set_meta("kmervae.kmer_order", "{not json"), "corrupt kmervae metadata"),
        (
            _set_column("kmer4", [b"\0" * 135] * 2, pa.binary(135)),
            None,
            r"column 'kmer4' has type fixed_size_binary\[135\], expected fixed_size_binary\[136\]",
        ),
        (
            _set_column("kmer3", [[0] * 32] * 2, pa.list_(pa.int32())),
            None,
            r"column 'kmer3' has type list<element: int32>, expected fixed_size_binary\[32\]",
        ),
        (lambda t: t.drop_columns(["gc"]), None, "missing column 'gc'"),
        (
            _set_column("gc", [0.5, float("nan")]),
            None,
            r"1 row\(s\) with gc outside \[0, 1\] \(NaN, inf\) or length < 1, e.g. r1 \(gc=nan",
        ),
        (
            _set_column("gc", [float("inf"), float("-inf")]),
            None,
            r"2 row\(s\) with gc .* e.g. r0 \(gc=inf, length=1500\), r1 \(gc=-inf",
        ),
        (_set_column("length", [1500, -3]), None, r"e.g. r1 \(gc=0\.\d+, length=-3\)"),
    ],
    ids=[
        "version",
        "signed-counts",
        "corrupt-order",
        "width",
        "list-column",
        "missing-gc",
        "nan-gc",
        "inf-gc",
        "negative-length",
    ],
)
def test_bad_parquet_is_refused_with_the_reason(dataset, change_table, change_meta, message):
    part = dataset / "part-00000.parquet"
    _rewrite(part, change_table, change_meta)
    with pytest.raises(InputError, match=message) as err:
        dataset_files(dataset)
    assert str(err.value).startswith(str(part)) and "\n" not in str(err.value)


def test_bad_rows_stop_training_before_it_starts(dataset, tmp_path, capsys):
    from kmervae.cli import main

    _rewrite(dataset / "part-00001.parquet", _set_column("gc", [float("nan"), 0.5]))
    code = main(
        ["train", str(dataset), "--engine", "local", "--preset", "tiny", "--out", str(tmp_path / "runs"), "--no-mlflow"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "r2 (gc=nan, length=1500)" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
