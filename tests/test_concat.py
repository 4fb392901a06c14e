"""`kmervae concat`: per-sample assemblies as one FASTA whose names carry the sample (VAMB's S1C<contig>)."""

from __future__ import annotations

import gzip

import pytest

from kmervae.cli import main
from kmervae.features.concat import concatenate
from kmervae.features.fasta import FastaReader
from tests.conftest import EXAMPLES, read_genome_record, write_fasta

GENOMES = ("Helicobacter_pylori_G27", "Staphylococcus_aureus_N315", "Phage_Agate_metagenomic")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Two samples' assemblies, as assemblers name contigs: the same ids in both (NODE_1, ...),
    different pieces of the genomes, and in each a contig under VAMB's 2,000 bases."""
    genomes = [read_genome_record(EXAMPLES / f"{name}.fna.gz")[1] for name in GENOMES]
    folder = tmp_path_factory.mktemp("samples")
    first = [("NODE_1", genomes[0][:30_000]), ("NODE_2", genomes[1][:25_000]), ("NODE_3", genomes[2][:1_500])]
    second = [("NODE_1", genomes[1][50_000:90_000]), ("NODE_2", genomes[0][:1_999]), ("NODE_3", genomes[2][:20_000])]
    return write_fasta(folder / "a.fna.gz", first), write_fasta(folder / "b.fna", second), first, second


def records(path):
    return [(r.id, r.sequence.tobytes().decode()) for r in FastaReader(path)]


def test_contigs_carry_their_sample_and_short_ones_are_counted(samples, tmp_path):
    a, b, first, second = samples
    out = tmp_path / "catalogue.fna.gz"
    summary = concatenate([a, b], out)
    expected = [(f"S1C{i}", s) for i, s in first if len(s) >= 2000] + [
        (f"S2C{i}", s) for i, s in second if len(s) >= 2000
    ]
    assert records(out) == expected  # the same bases, in the order given, under the new names
    assert gzip.open(out).read(1) == b">"  # compressed by its suffix
    s1, s2 = summary.samples
    assert (s1.name, s1.kept, s1.kept_bases, s1.short, s1.short_bases) == ("S1", 2, 55_000, 1, 1_500)
    assert (s2.name, s2.kept, s2.kept_bases, s2.short, s2.short_bases) == ("S2", 2, 60_000, 1, 1_999)
    lines = summary.lines()
    assert "skipped   2 contigs shorter than --min-length 2,000 (3,499 bp)" in lines
    assert "wrote     4 contigs (115,000 bp)" in lines and f"output    {out.absolute()}" in lines


def test_names_separator_and_minimum_length_are_the_users(samples, tmp_path):
    a, b, first, second = samples
    out = tmp_path / "catalogue.fna"
    concatenate([a, b], out, names=["gut_d1", "gut_d2"], separator="|", min_length=1)
    assert [name for name, _ in records(out)] == [f"gut_d1|{i}" for i, _ in first] + [f"gut_d2|{i}" for i, _ in second]


def test_the_catalogue_featurizes_under_the_new_names(samples, tmp_path):
    """Depth tables and BAM files are keyed by the catalogue's names: featurize reads them as any assembly."""
    from kmervae.base.feature_table import dataset_files, read_keys

    out = tmp_path / "catalogue.fna.gz"
    assert main(["concat", str(samples[0]), str(samples[1]), "-o", str(out), "--quiet"]) == 0
    assert main(["featurize", str(out), "-o", str(tmp_path / "features"), "--quiet"]) == 0
    ids = read_keys(dataset_files(tmp_path / "features"))[0]
    assert sorted(ids) == ["S1CNODE_1", "S1CNODE_2", "S2CNODE_1", "S2CNODE_3"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--names", "S1"], "--names gives 1 name(s) for 2 assembly file(s)"),
        (["--names", "gutC1,gut2"], "sample name 'gutC1' is empty, holds white space or holds the separator 'C'"),
        (["--names", "x,x"], "a sample name is given twice"),
        (["--min-length", "0"], "--min-length must be >= 1, got 0"),
        (["--separator", ""], "--separator '': expected a non-empty string without white space"),
    ],
)
def test_bad_settings_are_one_line_exit_2_and_write_nothing(samples, tmp_path, capsys, args, message):
    out = tmp_path / "catalogue.fna"
    assert main(["concat", str(samples[0]), str(samples[1]), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(samples, tmp_path, capsys):
    twice = write_fasta(tmp_path / "twice.fna", [("NODE_1", "ACGT" * 600), ("NODE_1", "GGCC" * 600)])
    out = tmp_path / "out" / "catalogue.fna"
    cases = [
        ([str(samples[0]), str(twice)], f"{twice}: contig id 'NODE_1' appears twice (record 2)"),
        ([str(samples[0]), str(samples[0])], "the same assembly file is given twice"),
        ([str(samples[0]), str(tmp_path / "missing.fna")], "missing.fna"),
    ]
    for inputs, message in cases:
        assert main(["concat", *inputs, "-o", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.parent.exists()  # not the file, nor a partial one, nor the folder made for it
    out.parent.mkdir()
    out.write_text("mine\n")
    assert main(["concat", str(samples[0]), str(samples[1]), "-o", str(out)]) == 2
    assert "exists already; pass --overwrite" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main(["concat", str(samples[0]), str(samples[1]), "-o", str(out), "--overwrite", "--quiet"]) == 0
    assert records(out)[0][0] == "S1CNODE_1"
