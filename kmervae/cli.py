"""The `kmervae` command: a thin layer that parses flags and calls the library.

Each subcommand lives in a `_cmd_*` function that imports what it needs, so
`kmervae --help` is instant and a bare host without Ray can still featurize.
Errors a user can fix (`KmervaeError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kmervae import __version__
from kmervae.base.errors import KmervaeError
from kmervae.base.metric_keys import VAL_LOSS
from kmervae.base.redact import redact
from kmervae.distributed.flags import add_cluster_flags, add_settings_flags, add_tracking_flags

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_contig_flags(p: argparse.ArgumentParser) -> None:
    """How records become contigs: one definition for featurize and markers, whose contigs must match."""
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
    _add_contig_flags(p)
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
    p.add_argument(
        "--abundance",
        type=Path,
        metavar="TSV|DIR",
        help="per-sample mean depth of every record: MetaBAT's depth table ('kmervae abundance', "
        "jgi_summarize_bam_contig_depths), VAMB's abundance TSV, CoverM's 'contig -m mean' output, or "
        "strobealign --aemb output (a folder of SAMPLE.tsv files, one per sample); stored as the "
        "'abundance' column (fragments share their record's depths)",
    )
    _add_featurize_output_flags(p)
    p.add_argument(
        "--markers",
        action="store_true",
        help="also find single-copy marker genes of the contigs (OUT_DIR/markers.tsv, as 'kmervae markers'), "
        "which sweeps rank bins by without labels (val/est_nc_bins); needs the markers extra",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing feature dataset at OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_featurize)


def _add_featurize_output_flags(p: argparse.ArgumentParser) -> None:
    """How `kmervae featurize` writes: threads, compression, file and row-group sizes, --strict."""
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="engine local: threads that count and write (default: one per core, at most 8); engine ray: "
        "tasks at once (default: one per CPU of the cluster)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: one Ray task per batch of contigs, on the cluster at --address (the "
        "same files)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="with --engine ray: Ray cluster address (default: $RAY_ADDRESS, else a local one)",
    )
    p.add_argument(
        "--compression",
        choices=("zstd", "lz4", "none"),
        default="zstd",
        help="parquet compression: zstd (level 1) is the smallest; lz4 writes about 10%% sooner for 1.85x "
        "the disk, none 3.6x",
    )
    p.add_argument("--rows-per-file", type=int, default=4096, help="contigs per parquet file")
    p.add_argument("--row-group-size", type=int, default=1024, help="contigs per parquet row group")
    p.add_argument("--strict", action="store_true", help="fail instead of skipping unusable contigs")


def _cmd_featurize(args: argparse.Namespace) -> int:
    from kmervae.features.kmer_counter import without_blas_and_cffi

    with without_blas_and_cffi():  # this process runs the featurizer alone
        from kmervae.features.featurize import FeaturizeSettings, featurize, load_kernels
        from kmervae.features.labels import Labels

        load_kernels()

    settings = FeaturizeSettings(
        fragment_length=args.fragment_length,
        min_length=args.min_length,
        rows_per_file=args.rows_per_file,
        row_group_size=args.row_group_size,
        compression=args.compression,
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
    abundance = None
    if args.abundance is not None:
        from kmervae.abundance.depth_table import AbundanceLookup, read_depth_table

        abundance = AbundanceLookup(read_depth_table(args.abundance))
    markers = None
    if args.markers:  # first: a FASTA without genes is refused before any output
        from kmervae.binning.marker_search import markers_of_fasta

        log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
        markers, found = markers_of_fasta(args.inputs, args.fragment_length, args.min_length, log=log)
    parts = None
    if args.engine == "ray":
        from kmervae.distributed.ray_tasks import ray_parts

        parts = ray_parts(args.address, args.workers)
    summary = featurize(
        args.inputs,
        args.out,
        settings,
        labels,
        progress=False if args.quiet else None,
        abundance=abundance,
        parts=parts,
    )
    print("\n".join(summary.lines()))
    if markers is not None:
        from kmervae.binning.markers import keep_with_dataset

        path = keep_with_dataset(markers, args.out)
        print(f"markers   {len(markers.contig):,} marker hits on {found.contigs:,} contigs: {path}")
    return 0


def _add_concat(sub: argparse._SubParsersAction) -> None:
    from kmervae.features.concat import MIN_LENGTH, SEPARATOR

    p = sub.add_parser(
        "concat",
        help="per-sample assemblies -> one FASTA whose contig names carry their sample (to bin them together)",
        description=(
            "Writes the contigs of several assemblies, one per sample, to one FASTA, each renamed "
            "<sample><separator><contig> (S1C<contig>, S2C<contig>, ... as VAMB's concatenate.py names them), "
            "leaving out contigs under --min-length. Map every sample's reads to this file, then "
            "'kmervae abundance', 'featurize', train, embed and bin it as one assembly; each bin can then be "
            "split by sample at the first separator. The output appears only when complete."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="ASSEMBLY", help="FASTA files, one assembly per sample")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="FASTA", help="FASTA to write (.gz to compress)")
    p.add_argument("--min-length", type=int, default=MIN_LENGTH, help="leave out contigs shorter than this")
    p.add_argument("--separator", default=SEPARATOR, help="between the sample's name and the contig's")
    p.add_argument(
        "--names",
        type=lambda text: text.split(","),
        metavar="NAME,NAME,...",
        help="the samples' names, one per file in order (default: S1, S2, ...)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(run=_cmd_concat)


def _cmd_concat(args: argparse.Namespace) -> int:
    from kmervae.features.concat import concatenate

    summary = concatenate(
        args.inputs,
        args.out,
        min_length=args.min_length,
        separator=args.separator,
        names=args.names,
        overwrite=args.overwrite,
        log=(lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr)),
    )
    print("\n".join(summary.lines()[len(summary.samples) :]))
    return 0


def _add_abundance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "abundance",
        help="BAM files -> per-sample mean read depth of every contig (MetaBAT's depth table)",
        description=(
            "Mean and variance of the read depth of every contig in each BAM file (one file per sample, "
            "reads mapped to the assembly, sorted by coordinate), by MetaBAT's definitions: alignments "
            "that are not secondary, duplicate or QC-failed, at or above --min-identity, the contig's "
            "first and last --edge-bases bases left out. Writes MetaBAT's depth table (contigName, "
            "contigLen, totalAvgDepth, then each sample's mean and variance), which 'kmervae featurize "
            "--abundance' and MetaBAT2 read; --format vamb writes VAMB's abundance TSV instead "
            "(contigname, then each sample's mean), for 'vamb bin --abundance_tsv'."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("bams", nargs="+", type=Path, metavar="BAM", help="sorted BAM (or SAM/CRAM) files, one per sample")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="TSV", help="depth table to write")
    p.add_argument("--min-identity", type=float, default=0.97, help="ignore reads below this end-to-end identity")
    p.add_argument("--edge-bases", type=int, default=75, help="bases at each contig end left out of mean and variance")
    p.add_argument("--min-mapq", type=int, default=0, help="ignore reads below this mapping quality")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="BAM files read at once; when not given, one per core (engine ray: one per CPU of the cluster)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: processes here; ray: one Ray task per BAM file on the cluster at --address (the files at "
        "the same path on every node)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="with --engine ray: Ray cluster address (default: $RAY_ADDRESS, else a local one)",
    )
    p.add_argument("--format", choices=("metabat", "vamb"), default="metabat", help="depth table format to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table at --out")
    p.set_defaults(run=_cmd_abundance)


def _cmd_abundance(args: argparse.Namespace) -> int:
    from kmervae.abundance.bam_depth import DepthSettings
    from kmervae.abundance.build import build_depth_table

    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    columns = None
    if args.engine == "ray":
        from kmervae.distributed.ray_tasks import ray_columns

        columns = ray_columns(args.address, args.workers, log)
    summary = build_depth_table(
        args.bams,
        args.out,
        DepthSettings(args.min_identity, args.edge_bases, args.min_mapq),
        workers=args.workers,
        fmt=args.format,
        overwrite=args.overwrite,
        log=log,
        columns=columns,
    )
    print("\n".join(summary.lines()))
    return 0


def _add_markers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "markers",
        help="assembly -> single-copy marker genes per contig (to estimate bin completeness and contamination)",
        description=(
            "Calls genes on every contig (pyrodigal, metagenomic mode) and searches them with pyhmmer at their "
            "trusted cutoffs against the bundled single-copy marker sets: 107 bacterial genes (SemiBin's and "
            "VAMB's) and 131 archaeal Pfam domains. Writes a TSV of (contig, set, marker, copies) that "
            "'kmervae bin --markers' uses to estimate each bin's completeness and contamination. Give the "
            "--fragment-length and --min-length that featurize used, so the contigs are the same. Needs the "
            "markers extra (pip install 'kmervae[markers]')."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="ASSEMBLY", help="FASTA files of the assembly")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="TSV", help="markers table to write")
    _add_contig_flags(p)
    p.add_argument(
        "--hmm",
        type=Path,
        default=None,
        metavar="FILE",
        help="HMMER3 profiles (with TC cutoffs) to use instead of the bundled bacterial set",
    )
    p.add_argument("--workers", type=int, default=None, help="threads; when not given, one per core")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table at --out")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(run=_cmd_markers)


def _cmd_markers(args: argparse.Namespace) -> int:
    import time

    from kmervae.base.errors import OutputError
    from kmervae.binning.marker_search import check_marker_flags, markers_of_fasta
    from kmervae.binning.markers import write_markers

    started = time.perf_counter()
    if args.out.exists() and not args.overwrite:
        raise OutputError(f"{args.out}: exists already; pass --overwrite to replace it")
    check_marker_flags(args.fragment_length, args.min_length, args.workers)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    table, summary = markers_of_fasta(
        args.inputs, args.fragment_length, args.min_length, hmm=args.hmm, workers=args.workers, log=log
    )
    write_markers(table, args.out)
    print("\n".join(summary.lines()))
    print(f"took      {time.perf_counter() - started:.1f} s")
    print(f"output    {args.out.absolute()}")
    return 0


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    add_settings_flags(
        p, "final", "override one setting, e.g. --set model.latent_dim=64 --set train.lr=3e-4 (repeatable)"
    )
    p.add_argument("--config", type=Path, metavar="YAML", help="YAML file with model/loss/train/data sections")


def _run_config(args: argparse.Namespace):
    from kmervae.core.config import RunConfig, preset_config

    config = preset_config(args.preset)
    if args.config is not None:
        config = RunConfig.from_yaml(args.config, base=config)
    return config.with_overrides(args.overrides)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the branched VAE on a feature dataset (Ray Train, or one local process)",
        description=(
            "Train the branched VAE on a feature dataset made by 'kmervae featurize'. The 'ray' engine "
            "streams the data with Ray Data to Ray Train workers (DDP; one per GPU, or CPU workers), "
            "checkpoints every epoch, survives worker failures and resumes when run again with the same "
            "--name and --storage. The 'local' engine trains in this process on the CPU or one GPU. "
            "A fixed share of contigs (data.val_fraction, chosen by a hash of contig_id) validates. "
            "Every run is logged to MLflow ($MLFLOW_TRACKING_URI, else ./mlflow.db)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data", type=Path, metavar="DATA", help="feature dataset folder (or one parquet file)")
    p.add_argument("--engine", choices=["ray", "local"], default="ray", help="where to train")
    _add_model_flags(p)
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    p.add_argument("--workers", type=int, default=1, help="ray: training workers (one per GPU on GPU clusters)")
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="ray: GPUs per worker (default: 1 when the cluster has enough GPUs, else 0)",
    )
    p.add_argument("--cpu", action="store_true", help="ray: train on CPU workers even where GPUs exist")
    p.add_argument(
        "--data-mode",
        choices=["auto", "materialize", "stream"],
        default="auto",
        help="ray: decode the data once into the object store, or re-read it every epoch "
        "(auto: materialize when it fits)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="run name: ray resumes a run of this name in --storage; also the MLflow run name (default: train-<time>)",
    )
    p.add_argument("--storage", default="runs/ray", help="ray: checkpoint storage, a folder or an s3:// URI")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for best.pt, last.pt, curves and tables "
        "(default: local runs/<name>, ray <storage>/<name>/outputs)",
    )
    add_tracking_flags(p, "kmervae")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_cluster_flags(
        p, "engine ray: show what Ray and the workers print (default: in train.log beside the checkpoints)"
    )
    p.set_defaults(run=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import time

    from kmervae.base.feature_table import dataset_files
    from kmervae.base.metric_keys import EPOCH, LOWEST_VAL_LOSS
    from kmervae.tracking.tracker import ui_command

    config = _run_config(args)
    if args.epochs is not None:
        config = config.with_train(epochs=args.epochs)
    dataset_files(args.data)  # a bad dataset fails before anything starts
    name = args.name or time.strftime("train-%Y%m%d-%H%M%S")
    train = _train_on_ray if args.engine == "ray" else _train_here
    history, best_path, last_path, run_id, uri = train(args, config, name)
    metric, best = LOWEST_VAL_LOSS.metric, LOWEST_VAL_LOSS.best_epoch(history)
    if best is None:
        print(f"trained   {len(history)} epochs; no epoch has a finite {metric}")
    else:
        print(f"trained   {len(history)} epochs; best {metric} {best[metric]:.4f} at epoch {int(best[EPOCH]) + 1}")
    print(f"best      {best_path}")
    print(f"last      {last_path}")
    if run_id is not None:
        print(f"mlflow    run {run_id} in experiment '{args.experiment}'; browse: {ui_command(uri)}")
    return 0


def _train_on_ray(args: argparse.Namespace, config, name: str):
    """`kmervae train --engine ray`: (history, best.pt, last.pt, MLflow run id, store URI).
    What Ray and the workers print goes to train.log in the outputs (--verbose: the console)."""
    from kmervae.distributed.console import quiet_console
    from kmervae.distributed.ray_engine import TRAIN_LOG, fit_ray, ray_outputs

    log_path = ray_outputs(args.storage, name, args.out) / TRAIN_LOG
    with quiet_console(log_path, args.verbose, relay=True):
        result = fit_ray(
            args.data,
            config,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            use_cpu=args.cpu,
            name=name,
            storage=args.storage,
            experiment=None if args.no_mlflow else args.experiment,
            mlflow_dir=args.mlflow_dir,
            address=args.address,
            out_dir=args.out,
            data_mode=args.data_mode,
            preset=args.preset,
        )
    if not args.verbose:
        print(f"log       {log_path} (what Ray and the workers printed)", file=sys.stderr)
    return result.history, result.best_checkpoint, result.last_checkpoint, result.mlflow_run_id, result.mlflow_uri


def _train_here(args: argparse.Namespace, config, name: str):
    """`kmervae train --engine local`: (history, best.pt, last.pt, MLflow run id, store URI)."""
    from kmervae.tracking.run import train_local, training_run
    from kmervae.tracking.tracker import tracking_uri

    spec = training_run(
        "local",
        name,
        config,
        args.out or Path("runs") / name,
        experiment=None if args.no_mlflow else args.experiment,
        uri=tracking_uri(args.mlflow_dir),
        data_path=args.data,
        preset=args.preset,
    )
    local, tracker = train_local(args.data, config, spec)
    run_id, uri = (tracker.run_id, tracker.uri) if tracker else (None, None)
    return local.history, local.best_checkpoint, local.last_checkpoint, run_id, uri


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
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="samples of the abundance column, for a model with model.abundance_widths (training reads it "
        "from the features)",
    )
    p.set_defaults(run=_cmd_describe)


def _cmd_describe(args: argparse.Namespace) -> int:
    from kmervae.base.errors import ConfigError
    from kmervae.core.describe import draw_diagram, format_table
    from kmervae.core.model import BranchedVAE

    config = _run_config(args)
    if args.out is not None and args.out.suffix.lower() not in (".png", ".svg"):
        raise ConfigError(f"-o {args.out}: the diagram is written as .png or .svg")
    if config.model.uses_abundance:
        if args.samples is None or args.samples < 1:
            raise ConfigError(
                "model.abundance_widths: give the number of samples of the abundance column with --samples N"
            )
        config = config.for_data(tuple(f"S{i + 1}" for i in range(args.samples)))
    print(format_table(BranchedVAE(config.model)))
    if args.out is not None:
        print(f"diagram   {draw_diagram(config.model, args.out)}")
    return 0


def _add_best(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "best",
        help="list the best runs in MLflow (optionally of one sweep) and fetch the best checkpoint",
        description="Rank the finished runs of an MLflow experiment by the best epoch's metric and show the "
        "parameters that differ between them; --download fetches the best run's checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--experiment", default="kmervae-sweeps", help="MLflow experiment")
    p.add_argument("--sweep", metavar="RUN_ID", help="only the trials of this sweep (its parent run id)")
    p.add_argument("--metric", default=VAL_LOSS, help="ranking metric (val/*_acc are maximised, others minimised)")
    p.add_argument("--top", type=int, default=5, help="rows to show")
    p.add_argument("--download", type=Path, metavar="DIR", help="download the best run's checkpoints/best.pt here")
    p.set_defaults(run=_cmd_best)


def _cmd_best(args: argparse.Namespace) -> int:
    from kmervae.apply.best import best_runs, download_checkpoint, format_rows

    rows = best_runs(args.experiment, args.sweep, args.metric, args.top)
    print(format_rows(rows, args.metric))
    if args.download is not None:
        print(f"downloaded {download_checkpoint(rows[0].run_id, args.download)}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the encoder (with its feature transform) to TorchScript, ONNX or MLflow",
        description="SOURCE is a checkpoint file, an MLflow run id or a registry URI (models:/NAME@ALIAS). The "
        "exported model takes length (int64), gc (float32), kmer7/kmer4/kmer3 counts (int32) with any batch size "
        "and returns the embedding, the latent mean L2-normalised (with --with-log-var also the raw mean and the "
        "log-variance).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--format", choices=["torchscript", "onnx", "mlflow"], required=True)
    p.add_argument("--out", type=Path, required=True, help="file (torchscript, onnx) or folder (mlflow)")
    p.add_argument(
        "--with-log-var",
        action="store_true",
        help="also output the raw latent mean and log-variance (TorchScript, ONNX)",
    )
    p.add_argument("--register", metavar="NAME", help="also log the export to MLflow and register it under NAME")
    p.add_argument("--alias", default="champion", help="registry alias for --register")
    p.set_defaults(run=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from kmervae.apply.export import export, register

    path = export(args.source, args.format, args.out, args.with_log_var)
    print(f"exported  {args.format} model to {path}")
    if args.register:
        print(f"registry  {register(path, args.format, args.register, args.alias)}")
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embed the contigs of a feature dataset with a model",
        description="MODEL is a checkpoint, a TorchScript or ONNX file, an MLflow model folder or models:/NAME@ALIAS. "
        "Writes a parquet file of contig_id, label (when present) and embedding (the latent mean), streaming.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("features", type=Path, metavar="FEATURES")
    p.add_argument("-o", "--out", type=Path, required=True, help="output parquet file")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: Ray Data batch inference over a pool of model actors (same rows, same order)",
    )
    p.add_argument("--actors", type=int, default=2, help="with --engine ray: model actors (one GPU each with cuda)")
    add_cluster_flags(p, "with --engine ray: show what Ray prints")
    p.set_defaults(run=_cmd_embed)


def _cmd_embed(args: argparse.Namespace) -> int:
    from kmervae.apply.embed import embed

    if args.engine == "ray":
        from kmervae.distributed.console import quiet_console
        from kmervae.distributed.ray_embed import embed_on_ray

        log_path = args.out.absolute().with_name(f"{args.out.name}.ray.log")
        with quiet_console(log_path, args.verbose) as console:
            summary = embed_on_ray(
                args.model,
                args.features,
                args.out,
                batch_size=args.batch_size,
                actors=args.actors,
                device=args.device,
                address=args.address,
                overwrite=args.overwrite,
                progress=console.isatty(),
            )
    else:
        summary = embed(args.model, args.features, args.out, args.batch_size, args.device, overwrite=args.overwrite)
    print(f"embedded  {summary.contigs:,} contigs into {summary.latent_dim} dimensions: {summary.out}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score embeddings against labels and simple baselines",
        description="With labels: kNN accuracy (k=1, 5; cosine; 5-fold), k-means ARI and silhouette, for the "
        "embedding and, given --labels-from-features, for two baselines on the same contigs (z-scored 4-mer "
        "log-frequencies, PCA of all k-mer log-frequencies). Without labels: k-means silhouette and active units.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("embeddings", type=Path, metavar="EMBEDDINGS")
    p.add_argument(
        "--labels-from-features",
        type=Path,
        metavar="FEATURES",
        help="feature dataset with labels (also enables the baselines)",
    )
    p.add_argument("--json", type=Path, help="write the table as JSON here (default: EMBEDDINGS with .eval.json)")
    p.add_argument("--mlflow-run", metavar="RUN_ID", help="log the scores to this MLflow run")
    p.set_defaults(run=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from kmervae.apply.evaluate import evaluate, format_table, log_to_mlflow, write_json

    result = evaluate(args.embeddings, args.labels_from_features, log=lambda line: print(line, file=sys.stderr))
    print(format_table(result))
    path = write_json(result, args.json or args.embeddings.with_suffix(".eval.json"))
    print(f"json      {path}")
    if args.mlflow_run:
        log_to_mlflow(result, args.mlflow_run, path)
        print(f"mlflow    logged to run {args.mlflow_run}")
    return 0


def _add_bin(sub: argparse._SubParsersAction) -> None:
    from kmervae.binning import bins

    p = sub.add_parser(
        "bin",
        help="cluster embedded contigs into genome bins (and score them against known genomes)",
        description="Clusters the embeddings that 'kmervae embed' wrote into bins (Leiden communities of the "
        "cosine kNN graph by default; hdbscan also available) and writes BINS_DIR/bins.tsv, bin_summary.tsv and "
        "summary.json, with --fasta one FASTA per bin of the original sequences. Bins under --min-bin-size bases "
        "stay unbinned. With labels (--labels-from-features, --labels, or a label column in the embeddings), "
        "reports per bin purity and recall of its main genome in bases and the bins at each quality level. "
        "The folder appears only when complete.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "embeddings",
        type=Path,
        nargs="+",
        metavar="EMBEDDINGS",
        help="embedding parquet from 'kmervae embed'; several (the same contigs embedded by models trained with "
        "other seeds or settings) bin as one ensemble",
    )
    p.add_argument("-o", "--out", type=Path, required=True, metavar="BINS_DIR", help="output folder")
    p.add_argument(
        "--fasta",
        type=Path,
        nargs="+",
        default=[],
        metavar="ASSEMBLY",
        help="FASTA file(s) the contigs came from: write one FASTA per bin (fragments RECORD:START-END map "
        "back to their record)",
    )
    p.add_argument(
        "--min-bin-size",
        type=int,
        default=bins.DEFAULT_MIN_BIN_SIZE,
        metavar="BP",
        help="bins with fewer bases are left unbinned",
    )
    p.add_argument("--method", choices=bins.METHODS, default=bins.DEFAULT_METHOD, help="clustering method")
    p.add_argument(
        "--resolution",
        type=float,
        default=bins.LEIDEN_RESOLUTION,
        help="leiden: higher splits more (more, smaller bins), lower merges",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--labels-from-features", type=Path, metavar="FEATURES", help="score bins against this dataset's labels"
    )
    group.add_argument("--labels", type=Path, metavar="TSV", help="score bins against a 'record_id<TAB>genome' table")
    p.add_argument("--seed", type=int, default=0, help="seed of the clustering")
    _add_bin_marker_flags(p)
    p.add_argument(
        "--split-by-sample",
        nargs="?",
        const="C",
        metavar="SEP",
        help="contigs are named <sample>SEP<contig> ('kmervae concat'; SEP C when not given): split every cluster "
        "by sample into one bin per sample, judged against that sample's assembly; with labels, also count the "
        "genomes with a near-complete bin in any sample",
    )
    p.add_argument("--mlflow-run", metavar="RUN_ID", help="log the bin counts and tables to this MLflow run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bins folder")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(run=_cmd_bin)


def _add_bin_marker_flags(p: argparse.ArgumentParser) -> None:
    """`kmervae bin`'s marker genes: where they come from, and the reclustering they drive."""
    from kmervae.binning.recluster import METHODS as RECLUSTER_METHODS

    marker_group = p.add_mutually_exclusive_group()
    marker_group.add_argument(
        "--markers",
        type=Path,
        metavar="TSV",
        help="marker genes of these contigs ('kmervae markers'; or markers.tsv of an earlier bin run): estimate "
        "each bin's completeness and contamination; with --fasta and without this, they are found here",
    )
    marker_group.add_argument(
        "--no-markers", action="store_true", help="do not look for marker genes (no completeness estimates)"
    )
    p.add_argument(
        "--recluster",
        choices=RECLUSTER_METHODS,
        help="improve the bins by their marker genes: unmarked (the default with markers) leaves out a part of a "
        "bin under the minimum bin size that carries no marker (a phage or plasmid that followed its host), "
        "kmeans splits a bin whose markers show a second genome (SemiBin2's way), leiden re-partitions it at a "
        "higher resolution, grid picks the resolution whose bins score best (COMEBin's way); none: the "
        "clusterer's bins as they are (the default without markers); needs --markers or --fasta",
    )


def _cmd_bin(args: argparse.Namespace) -> int:
    from kmervae.apply.binning import bin_contigs
    from kmervae.apply.evaluate import log_to_run

    result = bin_contigs(
        args.embeddings,
        args.out,
        fasta=args.fasta,
        labels_tsv=args.labels,
        labels_from_features=args.labels_from_features,
        method=args.method,
        min_bin_size=args.min_bin_size,
        resolution=args.resolution,
        seed=args.seed,
        markers_tsv=args.markers,
        find_markers=not args.no_markers,
        recluster=args.recluster,
        split_by_sample=args.split_by_sample,
        overwrite=args.overwrite,
        progress=False if args.quiet else None,
        log=(lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr)),
    )
    if result.quality is not None:
        print(result.quality.table())
    print("\n".join(result.lines()))
    if args.mlflow_run:
        log_to_run(args.mlflow_run, result.metrics(), [*result.files], "bins")
        print(f"mlflow    logged to run {args.mlflow_run}")
    return 0


def _add_mlflow_sync(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mlflow-sync",
        help="send MLflow calls saved while the tracking server was unreachable",
        description="A run that outlives a tracking-server outage saves the calls it could not send "
        "(metrics, params, artifacts, status) to mlflow-outbox.jsonl in its output folder. This sends "
        "them, in order, to $MLFLOW_TRACKING_URI (else ./mlflow.db); epochs already logged are not "
        "logged twice. Calls that still fail stay in the file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("outbox", type=Path, metavar="OUTBOX", help="an mlflow-outbox.jsonl file")
    p.set_defaults(run=_cmd_mlflow_sync)


def _cmd_mlflow_sync(args: argparse.Namespace) -> int:
    from kmervae.base.errors import ConfigError
    from kmervae.base.redact import redact
    from kmervae.tracking.tracker import sync_file, tracking_uri

    sent, left = sync_file(args.outbox)
    print(f"sent      {sent} call(s) to {redact(tracking_uri())}")
    if left:
        raise ConfigError(f"{left} call(s) could not be sent (is the server up?); they stay in {args.outbox}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `kmervae` command."""
    parser = argparse.ArgumentParser(
        prog="kmervae",
        description="Train and sweep branched VAEs on canonical k-mer profiles of DNA contigs.",
    )
    parser.add_argument("--version", action="version", version=f"kmervae {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_abundance(sub)
    _add_featurize(sub)
    _add_concat(sub)
    _add_markers(sub)
    _add_train(sub)
    _add_describe(sub)
    _add_best(sub)
    _add_export(sub)
    _add_embed(sub)
    _add_evaluate(sub)
    _add_bin(sub)
    _add_mlflow_sync(sub)
    return parser


QUICK_EXIT = ("featurize",)
"""Commands whose process holds nothing Python's teardown must release once they return (their
output written and closed, no cluster or server): the console script ends them with os._exit,
which skips 0.12 s of interpreter finalization (numba's and LLVM's objects), a tenth of
featurizing 167 Mbp (bench/RESULTS.md)."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    from kmervae.tracking.tracker import use_impatient_http

    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.run.__name__.removeprefix("_cmd_")
    use_impatient_http()
    try:
        return args.run(args)
    except KmervaeError as err:
        print(f"kmervae {command}: error: {redact(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kmervae: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def console() -> None:
    """Entry point of the `kmervae` console script."""
    code = main()
    if sys.argv[1:2] and sys.argv[1] in QUICK_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
