"""Self-describing checkpoints: weights, optimiser and scheduler state, every config, metrics.

A checkpoint holds only plain Python values and tensors, so it loads with
`torch.load(weights_only=True)` (nothing is unpickled) and rebuilds its model from the
file alone. Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kmervae import __version__
from kmervae.base.errors import ConfigError, InputError, InputNotFoundError, OutputError
from kmervae.base.feature_contract import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION
from kmervae.core.config import RunConfig
from kmervae.core.model import BranchedVAE

FORMAT = "kmervae-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint."""

    config: RunConfig
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    epoch: int
    metrics: dict[str, float]
    kmervae_version: str
    history: list[dict[str, float]]  # metrics of every epoch so far (survives resumes)

    def build_model(self, device: torch.device | str = "cpu") -> BranchedVAE:
        """The model of this checkpoint with its weights, in eval mode."""
        model = BranchedVAE(self.config.model)
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as err:
            raise InputError(f"checkpoint weights do not match its model config: {str(err).splitlines()[0]}") from None
        return model.to(device).eval()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):  # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: RunConfig,
    epoch: int,
    metrics: dict[str, float],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    history: list[dict[str, float]] | None = None,
) -> Path:
    """Write a checkpoint atomically; returns its path."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kmervae_version": __version__,
        "feature_schema_version": SCHEMA_VERSION,
        "config": config.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "history": [{k: float(v) for k, v in m.items()} for m in (history or [])],
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Serialized in memory first: torch's zip writer reports a full disk as an opaque
    # "unexpected pos" RuntimeError, a plain write says "No space left on device".
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())  # on disk before it replaces the previous checkpoint
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = err.strerror or str(err)
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise OutputError(
            f"{path}: cannot write the checkpoint ({reason}){kept}; free space or choose another location"
        ) from None
    return path


def checkpoint_bytes(config: RunConfig) -> int:
    """About how large a checkpoint of `config` is: weights plus Adam's two moments, float32."""
    with torch.device("meta"):  # counts parameters without allocating them
        n = sum(p.numel() for p in BranchedVAE(config.model).parameters())
    return 12 * n + (1 << 20)


CHECKPOINT_COPIES = 3
"""Copies of a checkpoint a run holds at once: best, latest, and the next one being written."""


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and check a checkpoint; errors say why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for foreign or truncated files
        raise InputError(
            f"{path}: not a readable kmervae checkpoint ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a kmervae checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format {payload.get('format_version')}, this kmervae {__version__} reads "
            f"{FORMAT_VERSION}"
        )
    if payload.get("feature_schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise InputError(
            f"{path}: trained on feature schema {payload.get('feature_schema_version')}, this kmervae uses "
            f"{SCHEMA_VERSION}"
        )
    try:
        config = RunConfig.from_dict(payload["config"])
    except ConfigError as err:
        raise InputError(f"{path}: checkpoint config is incompatible with kmervae {__version__}: {err}") from None
    return Checkpoint(
        config=config,
        model_state=payload["model_state"],
        optimizer_state=payload["optimizer_state"],
        scheduler_state=payload["scheduler_state"],
        epoch=payload["epoch"],
        metrics=payload["metrics"],
        kmervae_version=payload["kmervae_version"],
        history=payload.get("history", []),
    )
