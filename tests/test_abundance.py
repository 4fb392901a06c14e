"""`kmervae abundance`: depths from small BAM files written here with pysam, checked against
depth profiles laid out by hand (MetaBAT's definitions), and the depth tables' formats."""

from __future__ import annotations

import numpy as np
import pysam
import pytest

from kmervae.abundance.bam_depth import DepthSettings, bam_depths, pysam_depth, sample_depth
from kmervae.abundance.depth_table import read_depth_table
from kmervae.base.errors import InputError
from tests.conftest import kmervae

CONTIGS = [("A", 400), ("B", 100), ("C", 200)]


def write_bam(path, reads, contigs=CONTIGS, sort_order="coordinate"):
    """A BAM of `reads`: (contig, start, cigar, NM, flag, mapq) each, in the order given."""
    header = {"HD": {"VN": "1.6", "SO": sort_order}, "SQ": [{"SN": n, "LN": length} for n, length in contigs]}
    names = [n for n, _ in contigs]
    with pysam.AlignmentFile(str(path), "wb", header=header) as bam:
        for i, (contig, start, cigar, nm, flag, mapq) in enumerate(reads):
            seg = pysam.AlignedSegment()
            seg.query_name = f"r{i}"
            seg.flag = flag
            seg.reference_id = names.index(contig)
            seg.reference_start = start
            seg.mapping_quality = mapq
            seg.cigarstring = cigar
            seg.query_sequence = "A" * seg.infer_query_length()
            seg.set_tag("NM", nm)
            bam.write(seg)
    return path


# Sample 1: what counts on A (400 bp, middle 75..324) and B (100 bp: all bases), nothing on C.
SAMPLE1 = [
    ("A", 0, "100M", 0, 0, 60),  # 0..99
    ("A", 100, "50M", 0, 0, 60),  # 100..149
    ("A", 200, "100M", 0, 256, 60),  # secondary: ignored
    ("A", 200, "100M", 5, 0, 60),  # identity 95/100: ignored at 0.97
    ("A", 250, "60M2D40M", 2, 0, 60),  # identity 100/102 = 0.98: 250..309 and 312..351
    ("A", 300, "20M", 0, 2048, 60),  # supplementary: counts, as in MetaBAT: 300..319
    ("A", 320, "20M", 0, 1024, 60),  # duplicate: ignored
    ("A", 330, "20M", 0, 512, 60),  # QC fail: ignored
    ("B", 10, "50M", 0, 0, 3),  # 10..59
]


def profile(length, intervals):
    """Per-base depth of a contig from (start, end) intervals written out by hand."""
    depth = np.zeros(length)
    for start, end in intervals:
        depth[start:end] += 1
    return depth


def test_depths_follow_metabat_definitions(tmp_path):
    got = sample_depth(write_bam(tmp_path / "s1.bam", SAMPLE1))
    a = profile(400, [(0, 100), (100, 150), (250, 310), (312, 352), (300, 320)])[75:325]  # ends left out
    b = profile(100, [(10, 60)])  # 100 <= 2 * 75: every base
    assert got.contigs == ["A", "B", "C"]
    np.testing.assert_allclose(got.mean, [a.mean(), b.mean(), 0.0])
    np.testing.assert_allclose(got.variance, [a.var(ddof=1), b.var(ddof=1), 0.0])
    assert (got.records, got.counted, got.low_identity) == (9, 5, 1)


def test_flags_change_the_definitions(tmp_path):
    path = write_bam(tmp_path / "s1.bam", SAMPLE1)
    loose = sample_depth(path, DepthSettings(min_identity=0.9, edge_bases=0, min_mapq=10))
    a = profile(400, [(0, 100), (100, 150), (200, 300), (250, 310), (312, 352), (300, 320)])  # the 95% read too
    np.testing.assert_allclose(loose.mean[:2], [a.mean(), 0.0])  # B's read has mapq 3 < 10
    assert loose.low_identity == 1


def test_several_samples_and_the_table_round_trip(tmp_path):
    s1 = write_bam(tmp_path / "s1.bam", SAMPLE1)
    s2 = write_bam(tmp_path / "s2.bam", [("A", 75, "250M", 0, 0, 60), ("C", 0, "200M", 1, 0, 60)])
    out = tmp_path / "depth.tsv"
    result = kmervae("abundance", str(s1), str(s2), "-o", str(out), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "s1.bam: 9 records, 5 reads counted" in result.stderr
    assert "samples   2" in result.stdout and "reads     7 counted of 11 records" in result.stdout
    table = read_depth_table(out)
    assert table.format == "metabat" and table.samples == ("s1.bam", "s2.bam")
    assert table.contigs == ("A", "B", "C") and table.lengths.tolist() == [400, 100, 200]
    direct = bam_depths([s1, s2])
    np.testing.assert_allclose(table.depths, np.stack([d.mean for d in direct], axis=1), rtol=1e-5)
    np.testing.assert_allclose(table.depths[:, 1], [1.0, 0.0, 1.0])  # C (200 bp): its middle 50 bases
    header = out.read_text().splitlines()[0].split("\t")
    assert header == ["contigName", "contigLen", "totalAvgDepth", "s1.bam", "s1.bam-var", "s2.bam", "s2.bam-var"]
    vamb = tmp_path / "abundance.tsv"
    assert kmervae("abundance", str(s1), str(s2), "-o", str(vamb), "--format", "vamb").returncode == 0
    as_vamb = read_depth_table(vamb)
    assert as_vamb.format == "vamb" and as_vamb.samples == table.samples and as_vamb.contigs == table.contigs
    np.testing.assert_array_equal(as_vamb.depths, table.depths)
    described = " ".join(kmervae("abundance", "--help").stdout.split())
    for text in ("--min-identity MIN_IDENTITY", "(default: 0.97)", "(default: 75)", "--format {metabat,vamb}"):
        assert text in described


def test_bad_bams_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "depth.tsv"
    unsorted = write_bam(tmp_path / "u.bam", [("B", 0, "50M", 0, 0, 60), ("A", 0, "50M", 0, 0, 60)])
    other = write_bam(tmp_path / "o.bam", [], contigs=[("A", 400), ("B", 101), ("C", 200)])
    fasta = tmp_path / "asm.fna"
    fasta.write_text(">A\nACGT\n")
    good = write_bam(tmp_path / "s1.bam", SAMPLE1)
    truncated = tmp_path / "t.bam"
    truncated.write_bytes(good.read_bytes()[:-60])  # the last block and the end marker cut off
    unsorted_sam = to_sam(unsorted, tmp_path / "u.sam")
    queryname = write_bam(tmp_path / "q.bam", SAMPLE1, sort_order="queryname")
    (tmp_path / "other").mkdir()
    same_name = write_bam(tmp_path / "other" / "s1.bam", SAMPLE1)
    cases = [
        ([unsorted], "u.bam: record 2 is out of coordinate order; sort the file with 'samtools sort'"),
        ([truncated], "is the file complete?"),
        ([unsorted_sam], "u.sam: record 2 is out of coordinate order"),
        ([queryname], "q.bam: sorted by queryname, not by coordinate"),
        ([good, other], "o.bam: its reads are mapped to other contigs than"),
        ([fasta], "asm.fna: not a readable BAM/SAM/CRAM file"),
        ([tmp_path / "missing.bam"], "missing.bam: no such BAM file"),
        ([good, good], "the same BAM file is given twice"),
        ([good, same_name], "two BAM files are named s1.bam: sample names come from file names"),
    ]
    for bams, message in cases:
        result = kmervae("abundance", *map(str, bams), "-o", str(out))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert message in lines[-1] and "Traceback" not in result.stderr
        assert not out.exists() and not list(tmp_path.glob(".depth.tsv*"))


def to_sam(bam, path):
    """The same records as SAM text (read by pysam, not by the compiled scan)."""
    with pysam.AlignmentFile(str(bam)) as source, pysam.AlignmentFile(str(path), "w", template=source) as out:
        for read in source.fetch(until_eof=True):
            out.write(read)
    return path


def test_the_compiled_scan_agrees_with_pysam(tmp_path):
    """BAM files go through the compiled scan; SAM (and CRAM) through pysam: the same depths. NM
    stored as every integer type, other tags before it, and a read with no NM tag (exact)."""
    bam = write_bam(tmp_path / "s1.bam", SAMPLE1)
    with (
        pysam.AlignmentFile(str(bam)) as source,
        pysam.AlignmentFile(str(tmp_path / "tags.bam"), "wb", template=source) as out,
    ):
        for i, read in enumerate(source.fetch(until_eof=True)):
            nm = read.get_tag("NM")
            read.set_tags([("XA", "some;text", "Z"), ("XB", [1, 2, 3], None), ("MD", "100", "Z")])
            if i != 1:
                read.set_tag("NM", nm, "cCsSiI"[i % 6])
            out.write(read)
    for path in (bam, tmp_path / "tags.bam"):
        compiled = sample_depth(path)
        reference = pysam_depth(path)
        from_sam = sample_depth(to_sam(path, tmp_path / "copy.sam"))
        for other in (reference, from_sam):
            np.testing.assert_allclose(compiled.mean, other.mean, rtol=1e-12)
            np.testing.assert_allclose(compiled.variance, other.variance, rtol=1e-9)
            assert (compiled.records, compiled.counted, compiled.low_identity) == (
                other.records, other.counted, other.low_identity,
            )  # fmt: skip


def test_depth_table_formats(tmp_path):
    vamb = tmp_path / "vamb.tsv"
    vamb.write_text("contigname\tS1\tS2\nA\t1.5\t0\nB\t2\t3\n")
    coverm = tmp_path / "coverm.tsv"
    coverm.write_text("Contig\tS1.bam Mean\tS2.bam Mean\nA\t1.5\t0\nB\t2\t3\n")
    for path, samples in ((vamb, ("S1", "S2")), (coverm, ("S1.bam", "S2.bam"))):
        table = read_depth_table(path)
        assert table.samples == samples and table.contigs == ("A", "B") and table.lengths is None
        np.testing.assert_array_equal(table.depths, [[1.5, 0], [2, 3]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("contigname\tS1\tS1\nA\t1\t2\n", "sample 'S1' appears twice"),
        ("contigname\tS1\nA\tnan\n", "contig 'A' has depth nan in sample 'S1'"),
        ("contigname\tS1\nA\t1\nB\t-2\n", "contig 'B' has depth -2.0 in sample 'S1'"),
        ("contigname\tS1\nA\t1\nA\t2\n", "contig 'A' appears twice"),
        ("contigname\tS1\nA\t1\t2\n", "line 2: 3 fields, the header has 2"),
        ("Contig\tS1 Variance\nA\t1\n", "column 'S1 Variance' is not a mean depth"),
        ("id\tS1\nA\t1\n", "not a depth table"),
        ("contigName\tcontigLen\ttotalAvgDepth\tS1\tS2\nA\t3\t1\t1\t1\n", "must come in pairs"),
    ],
)
def test_bad_depth_tables(tmp_path, text, message):
    path = tmp_path / "depth.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match="depth.tsv: ") as err:
        read_depth_table(path)
    assert message in str(err.value)


def test_depths_travel_from_bam_files_through_featurize(tmp_path):
    """BAM files -> `kmervae abundance` -> `kmervae featurize --abundance`: each contig's stored
    depths are the ones computed from its reads (rounded to the table's 6 significant digits)."""
    from kmervae.base.feature_table import FeatureTable
    from tests.conftest import write_fasta

    rng = np.random.default_rng(3)
    contigs = [(name, "".join(rng.choice(list("ACGT"), length))) for name, length in CONTIGS]
    fasta = write_fasta(tmp_path / "assembly.fna", contigs)
    s1 = write_bam(tmp_path / "s1.bam", SAMPLE1)
    s2 = write_bam(tmp_path / "s2.bam", [("A", 75, "250M", 0, 0, 60), ("C", 0, "200M", 1, 0, 60)])
    depth = tmp_path / "depth.tsv"
    assert kmervae("abundance", str(s1), str(s2), "-o", str(depth)).returncode == 0
    out = tmp_path / "features"
    result = kmervae("featurize", str(fasta), "--abundance", str(depth), "-o", str(out), "--min-length", "100")
    assert result.returncode == 0, result.stderr
    stored = FeatureTable.from_parquet(out)
    expected = np.stack([s.mean for s in bam_depths([s1, s2])], axis=1)
    assert list(stored.contig_ids) == ["A", "B", "C"] and stored.samples == ("s1.bam", "s2.bam")
    np.testing.assert_allclose(stored.abundance, expected, rtol=1e-5)
