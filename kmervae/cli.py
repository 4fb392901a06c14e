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


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="final", help="architecture preset: final, outline or tiny")
    p.add_argument("--config", type=Path, metavar="YAML", help="YAML file with model/loss/train/data sections")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set model.latent_dim=64 --set train.lr=3e-4 (repeatable)",
    )


def _run_config(args: argparse.Namespace):
    from kmervae.config import RunConfig, preset

    config = RunConfig(model=preset(args.preset))
    if args.config is not None:
        config = RunConfig.from_yaml(args.config, base=config)
    return config.with_overrides(args.overrides)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the branched VAE on a feature dataset",
        description=(
            "Train the branched VAE on a feature dataset made by 'kmervae featurize'. The engine 'local' "
            "trains in this process on the CPU or one GPU and writes best.pt, last.pt and metrics.jsonl "
            "to --out. A fixed share of contigs (data.val_fraction, chosen by a hash of contig_id) validates."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data", type=Path, metavar="DATA", help="feature dataset folder (or one parquet file)")
    p.add_argument("--engine", choices=["local"], default="local", help="where to train")
    _add_model_flags(p)
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/train-<time>)")
    p.add_argument("--experiment", default="kmervae", help="MLflow experiment (store: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--name", default=None, help="MLflow run name (default: the output folder's name)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(run=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import time

    from kmervae.engine import fit_local

    config = _run_config(args)
    if args.epochs is not None:
        config = config.with_overrides([f"train.epochs={args.epochs}"])
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    tracker = None
    if not args.no_mlflow:
        from kmervae.feature_table import dataset_files
        from kmervae.tracking import Tracker

        dataset_files(args.data)  # a bad path fails before an MLflow run is created
        tracker = Tracker(args.experiment, args.name or out.name, tags={"engine": args.engine, "preset": args.preset})
    result = fit_local(args.data, config, out, tracker=tracker)
    best = min(result.history, key=lambda m: m["val/loss"])
    print(f"trained   {len(result.history)} epochs; best val/loss {best['val/loss']:.4f} at epoch {int(best['epoch']) + 1}")
    print(f"best      {result.best_checkpoint}")
    print(f"last      {result.last_checkpoint}")
    print(f"metrics   {result.out_dir / 'metrics.jsonl'}")
    if tracker is not None:
        from kmervae.tracking import ui_command

        print(f"mlflow    run {tracker.run_id} in experiment '{args.experiment}'; browse: {ui_command(tracker.uri)}")
    return 0


def _add_describe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "describe",
        help="print the model's layer table and draw its architecture",
        description="Print every block of the model (output shape, parameters, share of the total, exact total); "
        "with -o, also draw the branched architecture as a PNG or SVG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_flags(p)
    p.add_argument("-o", "--out", type=Path, metavar="FILE", help="diagram file (.png or .svg)")
    p.set_defaults(run=_cmd_describe)


def _cmd_describe(args: argparse.Namespace) -> int:
    from kmervae.describe import draw_diagram, format_table
    from kmervae.errors import ConfigError
    from kmervae.model import BranchedVAE

    config = _run_config(args)
    if args.out is not None and args.out.suffix.lower() not in (".png", ".svg"):
        raise ConfigError(f"-o {args.out}: the diagram is written as .png or .svg")
    print(format_table(BranchedVAE(config.model)))
    if args.out is not None:
        print(f"diagram   {draw_diagram(config.model, args.out)}")
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
    _add_train(sub)
    _add_describe(sub)
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
