"""`kmervae embed --engine ray` on a real local Ray cluster: the local engine's rows, in its order."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from kmervae.apply.embed import embed, read_embeddings
from kmervae.base.errors import ConfigError, InputError
from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.run_setup import fit_local
from tests.conftest import ray_untouched

ray = pytest.importorskip("ray")
cluster = pytest.mark.cluster  # starts a Ray cluster or a server


def test_rows_that_come_back_out_of_order_are_written_in_the_dataset_order():
    import pyarrow as pa

    from kmervae.distributed.ray_embed import in_dataset_order

    ids = np.array([f"c{i}" for i in range(10)], dtype=object)

    def table(rows):
        return pa.table({"contig_id": [f"c{i}" for i in rows], "x": rows})

    # What Ray 2.60 did: a short last batch first; and one batch with its rows out of order.
    arrived = [table([0, 1]), table([8, 9]), table([4, 2, 3]), table([7, 5, 6])]
    runs = list(in_dataset_order(arrived, ids))
    assert pa.concat_tables(runs).column("x").to_pylist() == list(range(10))
    assert [len(r) for r in runs] == [2, 3, 3, 2]  # each run passed on as soon as it could be
    with pytest.raises(RuntimeError, match="rows up to 2 of 10 in order"):
        list(in_dataset_order([table([0, 1]), table([3])], ids))


def test_actor_counts_the_cluster_cannot_host_are_one_line_before_ray_starts(tmp_path, abundance_features):
    from kmervae.distributed.ray_embed import actor_resources, embed_on_ray

    with ray_untouched(), pytest.raises(ConfigError, match="--actors must be >= 1, got 0"):
        embed_on_ray(str(tmp_path / "model.pt"), abundance_features, tmp_path / "e.parquet", actors=0)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"cannot host 2 embedding actor\(s\) x 1 GPU: the cluster has 1 GPU\(s\)"):
        actor_resources({"CPU": 16, "GPU": 1}, 2, 1.0)
    assert actor_resources({"CPU": 16}, 2, 0.0) == 1.0  # at most one CPU each
    assert actor_resources({"CPU": 2}, 4, 0.0) == 0.25  # the CPUs beside Ray Data's reader, shared


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, abundance_features):
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(
        ["train.epochs=1", "train.batch_size=64", "model.abundance_widths=[8]"]
    )
    return fit_local(
        abundance_features, config, tmp_path_factory.mktemp("model"), log=lambda line: None
    ).best_checkpoint


@cluster
def test_the_command_line_embeds_on_ray_the_local_engine_s_rows_in_its_order(
    local_ray, checkpoint, abundance_features, tmp_path, capsys
):
    """`kmervae embed --engine ray` with two actors (batches come back out of order) writes
    what the local engine writes: the same rows, order, values and schema, and says where."""
    from kmervae.cli import main

    assert len(list(abundance_features.glob("*.parquet"))) > 1  # Ray Data reads several files
    local = embed(str(checkpoint), abundance_features, tmp_path / "local.parquet", batch_size=100)
    out = tmp_path / "ray.parquet"
    args = ["embed", str(checkpoint), str(abundance_features), "-o", str(out), "--engine", "ray", "--actors", "2"]
    code = main([*args, "--batch-size", "100"])
    assert code == 0 and f"into {local.latent_dim} dimensions: {out}" in capsys.readouterr().out
    a, b = read_embeddings(local.out), read_embeddings(out)
    assert list(a.ids) == list(b.ids) and list(a.labels) == list(b.labels)
    assert np.array_equal(a.lengths, b.lengths) and np.array_equal(a.gc, b.gc)
    assert np.allclose(a.vectors, b.vectors, atol=1e-6, rtol=0)
    assert pq.read_schema(local.out).equals(pq.read_schema(out), check_metadata=True)
    # Nothing partial left; what Ray printed is in the log beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.parquet", "ray.parquet", "ray.parquet.ray.log"]


@cluster
def test_a_cluster_that_cannot_host_an_actor_is_refused_before_any_batch(
    local_ray, checkpoint, abundance_features, tmp_path
):
    from kmervae.distributed.ray_embed import embed_on_ray

    with pytest.raises(
        ConfigError, match=r"cannot host 8 embedding actor\(s\): the cluster has [0-9.]+ CPU\(s\), 1 of which"
    ):
        embed_on_ray(str(checkpoint), abundance_features, tmp_path / "e.parquet", actors=8)
    with pytest.raises(InputError, match="neither a kmervae checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"not a model")
        embed_on_ray(str(tmp_path / "junk.pt"), abundance_features, tmp_path / "e.parquet")
    assert not (tmp_path / "e.parquet").exists()
    assert not list(tmp_path.glob(".e.parquet.partial-*"))
