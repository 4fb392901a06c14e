"""Shared fixtures: the bundled examples, the shared genomes, and small FASTA writers."""

from __future__ import annotations

import bz2
import gzip
import lzma
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SHARED_GENOMES = REPO.parent / "shared" / "genomes"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The genomes bundled with the repository (always present)."""
    return EXAMPLES


@pytest.fixture(scope="session")
def shared_genomes() -> Path:
    """The ten shared genomes; tests needing them skip where the folder is absent."""
    if not any(SHARED_GENOMES.glob("*.fna.gz")):
        pytest.skip(f"needs the shared genomes in {SHARED_GENOMES} (present on developer machines and CI)")
    return SHARED_GENOMES


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60, newline: str = "\n") -> Path:
    """Write records as multi-line FASTA, compressed by the file's suffix (.gz, .bz2, .xz, .zst)."""
    lines = []
    for header, seq in records:
        lines.append(f">{header}")
        lines.extend(seq[i : i + width] for i in range(0, len(seq), width))
    data = (newline.join(lines) + newline).encode()
    return write_bytes(path, data)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write raw bytes, compressed according to the file's suffix."""
    suffix = path.suffix
    if suffix == ".gz":
        data = gzip.compress(data)
    elif suffix == ".bz2":
        data = bz2.compress(data)
    elif suffix == ".xz":
        data = lzma.compress(data)
    elif suffix == ".zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def example_features(tmp_path_factory) -> Path:
    """The bundled examples featurized as 5 kb labelled contigs (1,558 contigs), made once per session."""
    from data_pipeline.featurize import FeaturizeSettings, featurize
    from data_pipeline.labels import Labels

    out = tmp_path_factory.mktemp("example-features") / "features"
    featurize(sorted(EXAMPLES.glob("*.fna.gz")), out, FeaturizeSettings(fragment_length=5000), Labels(from_filename=True))
    return out


@pytest.fixture(autouse=True)
def no_outside_servers(monkeypatch):
    """Tests use their own local stores and clusters, never a server the developer's shell points at."""
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True, scope="module")
def one_ray_cluster_per_module():
    """A module whose code started Ray in this process (fit_ray, run_sweep) stops it at its end:
    the next module may start its own cluster (ray.init twice fails), or a separate one."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
