"""Ray storage locations: a local folder or a URI (s3://, gs://, ...), one way to handle both.

Ray Train and Tune write checkpoints and sweep state wherever `storage_path` points; the
few things kmervae itself does there (does a sweep exist, which trial folders hold
checkpoints) go through pyarrow's filesystems, so S3-compatible object storage works like
a shared folder. Files kmervae writes for people and for MLflow (best.pt, curves) always
go to a local folder: `local_outputs`.
"""

from __future__ import annotations

import os
import shutil
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


def check_writable(location: str | os.PathLike[str], need_bytes: int = 0) -> None:
    """Fail now, naming the location, when checkpoints could not be written there later.

    A probe file is written and removed (in the nearest existing folder, so nothing is
    left behind when the check fails) and, for local folders, the free space is compared
    with `need_bytes`. Catching a read-only mount or a full disk here costs milliseconds;
    finding it at the first checkpoint costs an epoch, or a whole sweep's first trials.
    """
    import uuid

    from kmervae.base.errors import OutputError

    location = str(location)
    name = f".kmervae-write-probe-{uuid.uuid4().hex}"
    if is_uri(location):
        fs, path = _filesystem(location)
        try:
            with fs.open_output_stream(f"{path.rstrip('/')}/{name}") as probe:
                probe.write(b"ok")
            fs.delete_file(f"{path.rstrip('/')}/{name}")
        except OSError as err:
            raise OutputError(
                f"{location}: storage is not writable ({str(err).splitlines()[0][:200]}); check the "
                "credentials and bucket, or choose another --storage"
            ) from None
        return
    folder = Path(location).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise OutputError(f"{folder}: cannot create this folder: {existing} is a file; choose another --storage/--out")
    try:
        with open(existing / name, "wb") as probe:
            probe.write(b"ok")
        (existing / name).unlink()
    except OSError as err:
        raise OutputError(
            f"{folder}: not writable ({err.strerror} in {existing}); fix its permissions or choose another "
            "--storage/--out"
        ) from None
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise OutputError(
            f"{folder}: {free / 2**20:,.0f} MiB free, checkpoints of this run need about "
            f"{need_bytes / 2**20:,.0f} MiB; "
            "free some space or choose another --storage/--out"
        )
