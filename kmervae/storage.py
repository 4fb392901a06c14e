"""Ray storage locations: a local folder or a URI (s3://, gs://, ...), one way to handle both.

Ray Train and Tune write checkpoints and sweep state wherever `storage_path` points; the
few things kmervae itself does there (does a sweep exist, which trial folders hold
checkpoints) go through pyarrow's filesystems, so S3-compatible object storage works like
a shared folder. Files kmervae writes for people and for MLflow (best.pt, curves) always
go to a local folder: `local_outputs`.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for s3://bucket/..., gs://..., file://...; False for plain paths."""
    return "://" in str(location)


def normalize(location: str | os.PathLike[str]) -> str:
    """URIs as given; local paths made absolute (a Ray job runs in a temporary folder)."""
    return str(location).rstrip("/") if is_uri(location) else str(Path(location).absolute())


def join(base: str, *parts: str) -> str:
    """`base/part/...` for paths and URIs alike."""
    return "/".join([base.rstrip("/"), *parts])


def _filesystem(location: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(location)


def exists(location: str) -> bool:
    """Whether a file or folder exists at a path or URI."""
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs

    fs, path = _filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def list_names(location: str) -> list[str]:
    """Names of the entries directly inside a folder (path or URI); [] when it does not exist."""
    if not is_uri(location):
        folder = Path(location)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    import pyarrow.fs

    fs, path = _filesystem(location)
    selector = pyarrow.fs.FileSelector(path, allow_not_found=True)
    return sorted(info.base_name for info in fs.get_file_info(selector))


def local_outputs(storage: str, *parts: str) -> Path:
    """A local folder for files made for people and MLflow: inside `storage` when it is
    local, under ./runs/outputs when storage is remote."""
    base = Path("runs/outputs").absolute() if is_uri(storage) else Path(storage)
    return base.joinpath(*parts)
