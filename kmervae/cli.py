"""The `kmervae` command: a thin layer that parses flags and calls the library.

Each subcommand lives in a `_cmd_*` function that imports what it needs, so
`kmervae --help` is instant and a bare host without Ray can still featurize.
Errors a user can fix (`KmervaeError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kmervae import __version__
from kmervae.errors import KmervaeError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_featurize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "featurize",
        help="FASTA -> canonical 7/4/3-mer + GC + length feature parquet",
        description=(
            "Count canonical 7-, 4- and 3-mers (a k-mer and its reverse complement are one bin), GC and "
            "length of every contig in FASTA/FASTQ files (plain, .gz, .bz2, .xz or .zst) and write them "
            "as a parquet dataset folder, one row per contig. Windows containing N or another IUPAC code "
            "are skipped; lower case counts as upper case, U as T. Output appears only when the whole run "
            "succeeded."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="FASTA/FASTQ files")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="OUT_DIR", help="output dataset folder")
    p.add_argument(
        "--fragment-length",
        type=int,
        default=None,
        metavar="N",
        help="cut each record into non-overlapping contigs of N bases, ids RECORD:START-END "
        "(1-based, inclusive); default: one contig per record",
    )
    p.add_argument(
        "--min-length",
        type=int,
        default=1000,
        metavar="N",
        help="skip (and count) contigs shorter than N bases, the last fragment of a record included",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--label-from-filename",
        action="store_true",
        help="label every contig with its file's name without extensions (E_coli.fna.gz -> E_coli)",
    )
    group.add_argument(
        "--labels",
        type=Path,
        metavar="TSV",
        help="tab-separated 'record_id<TAB>label' table (more columns ignored; a header line is allowed)",
    )
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: 1 for inputs under 16 MiB, else one per core)")
    p.add_argument("--rows-per-file", type=int, default=4096, help="contigs per parquet file")
    p.add_argument("--row-group-size", type=int, default=1024, help="contigs per parquet row group")
    p.add_argument("--strict", action="store_true", help="fail instead of skipping unusable contigs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing feature dataset at OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_featurize)


def _cmd_featurize(args: argparse.Namespace) -> int:
    from data_pipeline.featurize import FeaturizeSettings, featurize
    from data_pipeline.labels import Labels

    settings = FeaturizeSettings(
        fragment_length=args.fragment_length,
        min_length=args.min_length,
        rows_per_file=args.rows_per_file,
        row_group_size=args.row_group_size,
        workers=args.workers,
        strict=args.strict,
        overwrite=args.overwrite,
    )
    if args.label_from_filename:
        labels = Labels(from_filename=True)
    elif args.labels is not None:
        labels = Labels.from_tsv(args.labels)
    else:
        labels = None
    summary = featurize(args.inputs, args.out, settings, labels, progress=False if args.quiet else None)
    print("\n".join(summary.lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `kmervae` command."""
    parser = argparse.ArgumentParser(
        prog="kmervae",
        description="Train and sweep branched VAEs on canonical k-mer profiles of DNA contigs.",
    )
    parser.add_argument("--version", action="version", version=f"kmervae {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_featurize(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kmervae` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KmervaeError as err:
        print(f"kmervae {args.run.__name__.removeprefix('_cmd_')}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kmervae: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
