"""Export the encoder with its feature transform: TorchScript, ONNX, or an MLflow pyfunc model.

The exported model takes the stored feature columns as tensors (length int64, gc
float32, kmer7/kmer4/kmer3 counts int32, and for a model with an abundance branch
`abundance` float32 per sample; batch dimension dynamic) and returns the embedding, what
validation scores: the readout (`BranchedVAE.embed`: the latent mean L2-normalised, with the
z-scored TNF beside it where model.tnf_readout is set); with --with-log-var also the raw latent
mean and log-variance. The transform travels inside, so serving reads counts exactly as
training did. Sources: a checkpoint file, an MLflow run id (its best checkpoint), or a
registry URI such as `models:/kmervae-encoder@champion`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from kmervae.base.errors import ConfigError, InputError, InputNotFoundError
from kmervae.base.feature_contract import ABUNDANCE, input_columns
from kmervae.core.checkpoint import Checkpoint, load_checkpoint
from kmervae.core.config import ModelConfig
from kmervae.core.model import N3, N4, N7, BranchedVAE, embedding_dim
from kmervae.tracking.checkpoints import CHECKPOINT_IN_MODEL, fetch_checkpoint, is_run_id
from kmervae.tracking.run import EXPORT_FORMAT_TAG

FORMATS = ("torchscript", "onnx", "mlflow")
COUNT_DTYPE = torch.int32
"""Counts enter exported models as int32 (uint8/uint16/uint32 storage all fit)."""


class Encoder(nn.Module):
    """Transform + encoder of a BranchedVAE in eval mode: counts -> embedding (the readout),
    or (embedding, latent mean, log-variance) with `with_log_var`."""

    def __init__(self, model: BranchedVAE, with_log_var: bool = False):
        super().__init__()
        self.model = model.eval()
        self.with_log_var = with_log_var

    def forward(self, *inputs: Tensor):
        """The columns of `input_names(model.cfg)`, in that order."""
        x = self.model.transform(*inputs)
        mu, log_var = self.model.encode(x)
        embedding = self.model.embed(x, mu)
        return (embedding, mu, log_var) if self.with_log_var else embedding


def input_names(cfg: ModelConfig) -> list[str]:
    """The inputs of an exported encoder: the stored columns, `abundance` last for models with
    an abundance branch (float32, one value per sample)."""
    return list(input_columns(cfg.uses_abundance))


def example_inputs(cfg: ModelConfig, batch: int = 2) -> tuple[Tensor, ...]:
    """Small valid inputs in the exported dtypes (for tracing and signatures)."""
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.full((batch,), 5000, dtype=torch.int64),
        torch.full((batch,), 0.5, dtype=torch.float32),
        torch.randint(0, 4, (batch, N7), generator=g, dtype=COUNT_DTYPE),
        torch.randint(1, 60, (batch, N4), generator=g, dtype=COUNT_DTYPE),
        torch.randint(1, 200, (batch, N3), generator=g, dtype=COUNT_DTYPE),
    )
    if cfg.uses_abundance:
        inputs += (10 * torch.rand(batch, cfg.abundance_samples, generator=g),)
    return inputs


def resolve_source(source: str, workdir: Path) -> Checkpoint:
    """A checkpoint from a file, an MLflow run id, or a models:/ registry URI."""
    path = Path(source)
    if path.is_file():
        return load_checkpoint(path)
    if source.startswith(("models:/", "runs:/")) or is_run_id(source):
        return load_checkpoint(fetch_checkpoint(source, workdir))
    raise InputNotFoundError(f"{source}: not a checkpoint file, an MLflow run id or a models:/ URI")


def export_torchscript(checkpoint: Checkpoint, out: Path, with_log_var: bool = False) -> Path:
    """Trace the encoder to a TorchScript file (dynamic batch: no shape-dependent code)."""
    encoder = Encoder(checkpoint.build_model(), with_log_var)
    with torch.no_grad():
        cfg = checkpoint.config.model
        traced = torch.jit.trace(encoder, example_inputs(cfg, 3), check_inputs=[example_inputs(cfg, 5)])
    out.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(out))
    return out


def export_onnx(checkpoint: Checkpoint, out: Path, with_log_var: bool = False) -> Path:
    """Export the encoder to ONNX with a dynamic batch axis."""
    encoder = Encoder(checkpoint.build_model(), with_log_var)
    outputs = ["embedding", "mu", "log_var"] if with_log_var else ["embedding"]
    names = input_names(checkpoint.config.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            encoder,
            example_inputs(checkpoint.config.model, 3),
            str(out),
            input_names=names,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in names + outputs},
            opset_version=17,
            dynamo=False,  # the TorchScript-based exporter: mature for plain MLPs, no onnxscript rewrite
        )
    return out


MLFLOW_MODEL_CODE = '''"""kmervae encoder as an MLflow pyfunc model: needs torch, numpy and mlflow only."""
import mlflow
import numpy as np
import torch

INPUT_NAMES = {input_names!r}


class KmervaeEncoder(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.encoder = torch.jit.load(context.artifacts["encoder"], map_location="cpu").eval()

    def predict(self, context, model_input, params=None):
        """model_input: dict (or DataFrame) of INPUT_NAMES' columns -> embeddings."""
        def column(name, dtype):
            value = model_input[name]
            if hasattr(value, "to_numpy"):
                value = value.to_numpy()
            if value.dtype == object:
                value = np.stack(value)
            return torch.as_tensor(np.ascontiguousarray(value, dtype=dtype))

        dtypes = {"length": np.int64, "gc": np.float32, "abundance": np.float32}
        inputs = [column(name, dtypes.get(name, np.int32)) for name in INPUT_NAMES]
        with torch.no_grad():
            out = self.encoder(*inputs)
        return (out[0] if isinstance(out, tuple) else out).numpy()


mlflow.models.set_model(KmervaeEncoder())
'''


def export_mlflow(checkpoint: Checkpoint, source_file: Path | None, out: Path) -> Path:
    """Save an MLflow pyfunc model (TorchScript inside, code saved with it, signature, example)."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    if out.exists():
        raise InputError(f"{out}: exists; the MLflow model is a folder, choose a new --out")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        encoder = export_torchscript(checkpoint, tmp / "encoder.pt")
        code = tmp / "kmervae_encoder_model.py"
        cfg = checkpoint.config.model
        names = input_names(cfg)
        code.write_text(MLFLOW_MODEL_CODE.replace("{input_names!r}", repr(names)))
        artifacts = {"encoder": str(encoder)}
        if source_file is not None:
            artifacts["checkpoint"] = str(source_file)
        width = embedding_dim(cfg)
        depth_spec = (
            [TensorSpec(np.dtype(np.float32), (-1, cfg.abundance_samples), ABUNDANCE)] if cfg.uses_abundance else []
        )
        signature = ModelSignature(
            inputs=Schema(
                [
                    TensorSpec(np.dtype(np.int64), (-1,), "length"),
                    TensorSpec(np.dtype(np.float32), (-1,), "gc"),
                    TensorSpec(np.dtype(np.int32), (-1, N7), "kmer7"),
                    TensorSpec(np.dtype(np.int32), (-1, N4), "kmer4"),
                    TensorSpec(np.dtype(np.int32), (-1, N3), "kmer3"),
                ]
                + depth_spec
            ),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, width), "embedding")]),
        )
        example = {name: tensor.numpy() for name, tensor in zip(names, example_inputs(cfg, 2), strict=True)}
        mlflow.pyfunc.save_model(
            str(out),
            python_model=str(code),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", f"mlflow=={mlflow.__version__}"],
        )
    if source_file is not None:  # a stable name, so `export models:/...` can find it again
        shutil.copy(Path(out) / "artifacts" / Path(source_file).name, Path(out) / "artifacts" / CHECKPOINT_IN_MODEL)
    return out


def export(source: str, fmt: str, out: str | Path, with_log_var: bool = False) -> Path:
    """Export SOURCE to `out` in format `fmt`; returns what was written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is unknown; allowed: {', '.join(FORMATS)}")
    out = Path(out)
    with tempfile.TemporaryDirectory() as workdir:
        checkpoint = resolve_source(source, Path(workdir))
        source_file = Path(source) if Path(source).is_file() else next(Path(workdir).rglob("*.pt"), None)
        if fmt == "torchscript":
            return export_torchscript(checkpoint, out, with_log_var)
        if fmt == "onnx":
            return export_onnx(checkpoint, out, with_log_var)
        if with_log_var:
            raise ConfigError("--with-log-var applies to torchscript and onnx; the MLflow model returns the embedding")
        return export_mlflow(checkpoint, source_file, out)


def register(path: Path, fmt: str, name: str, alias: str | None, experiment: str = "kmervae-exports") -> str:
    """Log an exported model to an MLflow run and register it; returns its models:/ URI."""
    from kmervae.tracking.tracker import Tracker

    tracker = Tracker(experiment, f"export-{fmt}", tags={EXPORT_FORMAT_TAG: fmt})
    if path.is_dir():
        tracker.log_folder(path, "model")
    else:
        tracker.log_artifact(path, "model")
    uri = tracker.register("model", name, alias, tags={"format": fmt})
    if uri is None:
        tracker.finish("FAILED")
        raise ConfigError(f"MLflow at {tracker.uri} became unreachable: {name} not registered; run the export again")
    tracker.finish()
    return uri
