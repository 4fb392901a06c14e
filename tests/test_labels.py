"""Labels from file names and from TSV tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmervae.base.errors import InputError, InputNotFoundError
from kmervae.features.labels import Labels


def test_label_from_filename():
    assert Labels(from_filename=True).for_records(Path("/x/E_coli.fna.gz"), ["chr", "plasmid"]) == ["E_coli"] * 2
    assert Labels().for_records(Path("a.fa"), ["chr"]) == [None]


def test_tsv_with_header_comments_and_extra_columns(tmp_path):
    # The layout of shared/genomes/labels.tsv: a header, then id, label, length and source.
    path = tmp_path / "labels.tsv"
    rows = [("Chlamydia_trachomatis|CHLTCG", "Chlamydia_trachomatis", "1042519", "Debian (GPL-3+)")]
    rows += [
        (f"Klebsiella_pneumoniae_HS11286|CP0032{i:02d}.1", "Klebsiella_pneumoniae_HS11286", "1000", "x")
        for i in range(15)
    ]
    lines = ["seq_id\torganism\tlength\tsource", "# plasmids follow the chromosome", *("\t".join(r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    labels = Labels.from_tsv(path)
    found = labels.for_records(Path("any.fa"), ["Chlamydia_trachomatis|CHLTCG", "unknown"])
    assert found == ["Chlamydia_trachomatis", None]
    assert labels.unused == 15  # 16 entries, one used


def test_tsv_without_header(tmp_path):
    path = tmp_path / "l.tsv"
    path.write_text("# comment\nc1\tA\nc2\tB\textra\n\n")
    labels = Labels.from_tsv(path)
    assert labels.table == {"c1": "A", "c2": "B"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("c1\tA\nc1\tB\n", "line 2: record 'c1' has two labels"),
        ("c1 A\n", "line 1: expected 'record_id<TAB>label'"),
        ("c1\t\n", "line 1: expected 'record_id<TAB>label'"),
        ("# only a comment\n", "no labels found"),
    ],
)
def test_bad_tables_are_refused(tmp_path, text, message):
    path = tmp_path / "l.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        Labels.from_tsv(path)


def test_missing_table(tmp_path):
    with pytest.raises(InputNotFoundError):
        Labels.from_tsv(tmp_path / "none.tsv")
