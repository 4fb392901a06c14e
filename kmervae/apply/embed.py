"""Embed contigs with any exported model (or a checkpoint), streaming, into a latent parquet.

Models: a kmervae checkpoint, a TorchScript file, an ONNX file, an MLflow model folder or
a `models:/NAME@ALIAS` URI. Features are read one record batch at a time and written
the same way, so memory stays bounded whatever the dataset size. The output has one
row per contig: `contig_id`, `label` (when the features have labels), `length` and `gc`
(copied from the features: what `kmervae bin` needs to size bins) and `embedding` (a
fixed-size list of float32: the model's first output, which for kmervae's exports and
checkpoints is the readout, the latent mean L2-normalised).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kmervae.base.errors import ConfigError, InputError, InputNotFoundError, OutputError
from kmervae.base.feature_contract import ABUNDANCE, KMER_COLUMNS, MODEL_INPUTS, input_columns
from kmervae.base.feature_table import dataset_files, decode_inputs, has_labels
from kmervae.binning.bins import readout

Embedder = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Takes length (int64), gc (float32), kmer7/kmer4/kmer3 (int32) arrays; returns (n, latent) float32."""


def _columns(batch: dict[str, np.ndarray], names) -> list[np.ndarray]:
    """The model's inputs from a batch of decoded feature columns."""
    if ABUNDANCE in names and ABUNDANCE not in batch:
        raise InputError(
            "this model has an abundance branch and these features have no 'abundance' column; "
            "featurize them with --abundance depth.tsv"
        )
    return [batch[name] for name in names]


def _torch_embedder(module: torch.nn.Module, device: torch.device, abundance: bool) -> Embedder:
    module = module.to(device).eval()
    names = input_columns(abundance)

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        # arrow hands over read-only arrays (length, gc): copied, as torch.from_numpy wants to own them
        columns = (c if c.flags.writeable else c.copy() for c in _columns(batch, names))
        inputs = [torch.from_numpy(column).to(device) for column in columns]
        with torch.no_grad():
            out = module(*inputs)
        return (out[0] if isinstance(out, tuple) else out).float().cpu().numpy()

    return run


def load_embedder(model: str, device: str = "cpu") -> Embedder:
    """Open a model in any supported format for embedding."""
    from kmervae.apply.export import Encoder
    from kmervae.core.checkpoint import load_checkpoint

    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this host has no CUDA device; use --device cpu")
    path = Path(model)
    if model.startswith("models:/") or (path.is_dir() and (path / "MLmodel").exists()):
        import mlflow

        from kmervae.tracking.tracker import tracking_uri

        try:
            # A registered model is downloaded to a temporary folder, removed once loaded (the
            # encoder is read into memory by load_context): each embed used to leave ~44 MB behind.
            with tempfile.TemporaryDirectory(prefix="kmervae-model-") as folder:
                if model.startswith("models:/"):  # resolve against our store without touching mlflow's global state
                    uri = tracking_uri()
                    model = mlflow.artifacts.download_artifacts(
                        model, dst_path=folder, tracking_uri=uri, registry_uri=uri
                    )
                pyfunc = mlflow.pyfunc.load_model(model)
        except Exception as err:  # mlflow raises several types for missing or broken models
            raise InputError(f"{model}: cannot load the MLflow model ({str(err).splitlines()[0][:300]})") from None
        return lambda batch: np.asarray(pyfunc.predict(batch), dtype=np.float32)
    if not path.exists():
        raise InputNotFoundError(f"{model}: no such model file or folder")
    if path.suffix == ".onnx":
        import onnxruntime

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        session = onnxruntime.InferenceSession(str(path), providers=providers)
        names = [i.name for i in session.get_inputs()]
        return lambda batch: session.run(None, dict(zip(names, _columns(batch, names), strict=True)))[0]
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
            inputs = len(list(module.graph.inputs())) - 1  # self, then the columns
            return _torch_embedder(module, torch.device(device), abundance=inputs > len(MODEL_INPUTS))
        except RuntimeError as err:
            raise InputError(f"{model}: broken TorchScript file ({str(err).splitlines()[0][:200]})") from None
    try:
        checkpoint = load_checkpoint(path)
    except InputError:
        raise InputError(f"{model}: neither a kmervae checkpoint, TorchScript, ONNX nor MLflow model") from None
    model = checkpoint.build_model()
    return _torch_embedder(Encoder(model), torch.device(device), abundance=model.cfg.uses_abundance)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code (``*/code/``); torch.save checkpoints do not."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def decode_batch(batch: pa.RecordBatch, fmt) -> dict[str, np.ndarray]:
    """A record batch of feature columns -> the exported models' input arrays (counts as int32)."""
    out = decode_inputs(batch, fmt)
    for name in KMER_COLUMNS.values():
        out[name] = out[name].astype(np.int32)
    return out


def embedding_table(ids, labels, lengths, gc, vectors: np.ndarray) -> pa.Table:
    """The columns of an embedding parquet (the one schema `embed` writes and `bin`/`evaluate`
    read): contig_id, label (when given), length, gc, embedding (fixed-size list of float32)."""
    columns = {"contig_id": pa.array(ids, pa.string())}
    if labels is not None:
        columns["label"] = pa.array(labels, pa.string())
    columns["length"] = pa.array(lengths, pa.int64())
    columns["gc"] = pa.array(gc, pa.float32())
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return pa.table(columns)


def write_embeddings(path: str | Path, ids, labels, lengths, gc, vectors: np.ndarray) -> Path:
    """An embedding parquet from arrays (baselines, benchmarks, tests), in embed's schema."""
    path = Path(path)
    pq.write_table(embedding_table(ids, labels, lengths, gc, vectors), path, compression="zstd")
    return path


@dataclass
class EmbedSummary:
    """What `embed` wrote."""

    out: Path
    contigs: int
    latent_dim: int


def embed(
    model: str,
    features: str | Path,
    out: str | Path,
    batch_size: int = 1024,
    device: str = "cpu",
    progress: bool | None = None,
    overwrite: bool = False,
) -> EmbedSummary:
    """Embed every contig of a feature dataset in this process; the output appears only when complete."""
    files = check_embed_job(features, out, batch_size, overwrite)
    embedder = load_embedder(model, device)
    labeled = has_labels(files)
    columns = embed_columns(files, labeled)

    def tables():
        for path in files.paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
                yield embedded_table(batch, embedder(decode_batch(batch, files.format)), labeled)

    return write_embedding_tables(tables(), out, model, features, files.rows, progress)


def check_embed_job(features: str | Path, out: str | Path, batch_size: int, overwrite: bool):
    """The dataset's files, once the batch size and the output path are known to be usable."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    files = dataset_files(features)
    out = Path(out)
    if out.exists() and not (overwrite and out.is_file()):
        raise OutputError(f"{out}: exists; choose another -o or pass --overwrite")
    return files


def embed_columns(files, labeled: bool) -> list[str]:
    """The feature columns embedding reads: ids, the model's inputs, labels where every file has them."""
    return ["contig_id", *files.format.input_columns] + (["label"] if labeled else [])


def embedded_table(batch, vectors: np.ndarray, labeled: bool) -> pa.Table:
    """The embedding parquet's rows for one batch of feature columns and its vectors."""
    label = batch.column("label") if labeled else None
    return embedding_table(batch.column("contig_id"), label, batch.column("length"), batch.column("gc"), vectors)


def write_embedding_tables(
    tables, out: str | Path, model: str, features: str | Path, total: int, progress: bool | None
) -> EmbedSummary:
    """Write embedded tables, in order, to `out` (through a temporary name: the file appears
    only when complete), with the model and latent size in its metadata; progress per contig."""
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    writer = None
    rows = latent = 0
    bar = tqdm(
        total=total, unit="contig", desc="embed", disable=None if progress is None else not progress, file=sys.stderr
    )
    try:
        for table in tables:
            if writer is None:
                latent = table.schema.field("embedding").type.list_size
                schema = table.schema.with_metadata(
                    {b"kmervae.model": str(model).encode(), b"kmervae.latent_dim": str(latent).encode()}
                )
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
            rows += len(table)
            bar.update(len(table))
        if writer is None:
            raise InputError(f"{features}: no contigs to embed")
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return EmbedSummary(out, rows, latent)


class Embeddings(NamedTuple):
    """The columns of an embedding parquet (`length` and `gc` are None in files written before
    embed copied them)."""

    ids: np.ndarray  # (n,) contig ids, object
    vectors: np.ndarray  # (n, d) float32
    labels: np.ndarray | None  # (n,) object, None for an unlabelled contig
    lengths: np.ndarray | None  # (n,) int64
    gc: np.ndarray | None  # (n,) float32


def read_embeddings(path: str | Path) -> Embeddings:
    """An embedding parquet's contig ids, vectors and, where present, labels, lengths and GC."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such embedding file; create it with 'kmervae embed'")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable parquet file ({err})") from None
    if "embedding" not in table.column_names or not pa.types.is_fixed_size_list(table.schema.field("embedding").type):
        raise InputError(f"{path}: no fixed-size 'embedding' column; create it with 'kmervae embed'")
    dim = table.schema.field("embedding").type.list_size
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    column = lambda name, dtype: (  # noqa: E731
        table.column(name).to_numpy().astype(dtype) if name in table.column_names else None
    )
    labels = np.asarray(table.column("label").to_pylist(), dtype=object) if "label" in table.column_names else None
    return Embeddings(
        np.asarray(table.column("contig_id").to_pylist(), dtype=object),
        vectors.astype(np.float32),
        labels,
        column("length", np.int64),
        column("gc", np.float32),
    )


def read_ensemble(paths: Sequence[str | Path]) -> Embeddings:
    """Several embeddings of the same contigs (models trained with other seeds or settings) as one:
    each contig's unit-length readouts side by side, in the first file's order, so that the cosine
    of two contigs is the mean of their cosines in each model. Labels, lengths and GC come from the
    first file that has them. One file is read as it is."""
    first, *rest = [read_embeddings(path) for path in paths]
    if not rest:
        return first
    parts, found = [readout(first.vectors)], list(first)
    where = {cid: i for i, cid in enumerate(first.ids)}
    for path, other in zip(paths[1:], rest, strict=True):
        order = np.array([where.get(cid, -1) for cid in other.ids])
        if len(other.ids) != len(first.ids) or (order < 0).any() or len(set(order)) != len(order):
            missing = int((order < 0).sum())
            raise InputError(
                f"{path}: holds {len(other.ids):,} contigs, {missing:,} of them not in {paths[0]} "
                f"({len(first.ids):,}); embed the same feature dataset with every model"
            )
        placed = np.empty_like(other.vectors)
        placed[order] = other.vectors
        parts.append(readout(placed))
        for i in (2, 3, 4):  # labels, lengths, gc where the first file has none
            if found[i] is None and other[i] is not None:
                column = np.empty_like(other[i])
                column[order] = other[i]
                found[i] = column
    return Embeddings(first.ids, np.concatenate(parts, axis=1), *found[2:])
