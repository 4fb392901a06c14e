"""Export to TorchScript, ONNX and MLflow; embed with each; evaluate against baselines."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kmervae.apply.embed import decode_batch, embed, read_embeddings
from kmervae.apply.evaluate import evaluate, format_table, score
from kmervae.apply.export import Encoder, export
from kmervae.base.errors import ConfigError, InputError, InputNotFoundError, OutputError
from kmervae.base.feature_table import FeatureTable, dataset_files
from kmervae.core.checkpoint import load_checkpoint
from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.model import BranchedVAE, embedding_dim
from kmervae.core.run_setup import fit_local


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, example_features):
    out = tmp_path_factory.mktemp("trained")
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(["train.epochs=2", "train.batch_size=64"])
    return fit_local(example_features, config, out, log=lambda line: None).best_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("exported")
    return {
        "checkpoint": checkpoint,
        "torchscript": export(str(checkpoint), "torchscript", out / "encoder.pt"),
        "onnx": export(str(checkpoint), "onnx", out / "encoder.onnx"),
        "mlflow": export(str(checkpoint), "mlflow", out / "mlflow-model"),
    }


def real_inputs(features, rows: int) -> dict[str, np.ndarray]:
    files = dataset_files(features)
    batch = next(pq.ParquetFile(files.paths[0]).iter_batches(batch_size=rows))
    return decode_batch(batch, files.format)


def reference(checkpoint, inputs) -> np.ndarray:
    encoder = Encoder(load_checkpoint(checkpoint).build_model())
    with torch.no_grad():
        return encoder(*(torch.from_numpy(inputs[k]) for k in ("length", "gc", "kmer7", "kmer4", "kmer3"))).numpy()


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_torchscript_and_onnx_match_pytorch_with_any_batch_size(exported, example_features, rows):
    import onnxruntime

    inputs = real_inputs(example_features, rows)
    expected = reference(exported["checkpoint"], inputs)
    traced = torch.jit.load(str(exported["torchscript"]))
    with torch.no_grad():
        got = traced(*(torch.from_numpy(inputs[k]) for k in ("length", "gc", "kmer7", "kmer4", "kmer3"))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["embedding"], inputs)[0], expected, rtol=1e-5, atol=1e-5)


def test_exports_return_the_normalised_readout_of_the_latent_mean(exported, example_features):
    """What validation scores is what users embed with: the latent mean of the model, L2-normalised."""
    import onnxruntime

    inputs = real_inputs(example_features, 50)
    model = load_checkpoint(exported["checkpoint"]).build_model().eval()
    with torch.no_grad():
        mu = model(*(torch.from_numpy(inputs[k]) for k in ("length", "gc", "kmer7", "kmer4", "kmer3"))).mu.double()
    expected = (mu / mu.norm(dim=1, keepdim=True)).numpy()  # worked out here, not with readout()
    traced = torch.jit.load(str(exported["torchscript"]))
    with torch.no_grad():
        got = traced(*(torch.from_numpy(inputs[k]) for k in ("length", "gc", "kmer7", "kmer4", "kmer3"))).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, inputs)[0], expected, atol=1e-5)


def test_the_tnf_readout_puts_the_baselines_tnf_beside_the_latent_mean(example_features, tmp_path):
    """model.tnf_readout = w: the embedding users get (exports, `kmervae embed`) is the latent
    mean at unit length beside w times the untrained baseline's z-scored TNF at unit length, so
    that cosines mix as (cos_latent + w^2 cos_tnf) / (1 + w^2). Every contig trains here, so the
    model's TNF statistics are the baseline's own, computed by `kmervae evaluate`'s code."""
    import onnxruntime

    from kmervae.apply.evaluate import baselines

    w = 0.5
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(
        ["train.epochs=1", "train.batch_size=128", "data.val_split=all", f"model.tnf_readout={w}"]
    )
    checkpoint = fit_local(example_features, config, tmp_path / "run", log=lambda line: None).best_checkpoint
    onnx = export(str(checkpoint), "onnx", tmp_path / "encoder.onnx")
    vectors = read_embeddings(embed(str(onnx), example_features, tmp_path / "emb.parquet", progress=False).out)
    latent = PRESETS["tiny"].latent_dim
    assert vectors.vectors.shape == (1558, latent + 136)
    scale = np.sqrt(1 + w**2)
    z, tnf = vectors.vectors[:, :latent] * scale, vectors.vectors[:, latent:] * scale / w
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    expected = baselines(example_features, vectors.ids, 8)["tnf_zscore"].astype(np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(tnf, expected, atol=2e-4)
    model = load_checkpoint(checkpoint).build_model().eval()  # the latent half is the model's mean
    inputs = real_inputs(example_features, 50)
    with torch.no_grad():
        mu = model(*(torch.from_numpy(inputs[k]) for k in ("length", "gc", "kmer7", "kmer4", "kmer3"))).mu.double()
    np.testing.assert_allclose(z[:50], (mu / mu.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, inputs)[0], vectors.vectors[:50], atol=1e-5)
    assert {"tnf_mean", "tnf_std"} <= set(model.state_dict())
    assert embedding_dim(model.cfg) == latent + 136  # the width the MLflow export's signature declares


def test_the_tnf_readout_turns_off_above_its_sample_count():
    """With more samples than model.tnf_readout_max_samples the trainers' data-derived config
    (`RunConfig.for_data`, which every engine applies) turns the TNF readout off: depth separates
    what composition cannot. At or under it, or with no limit, it stays."""
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(["model.tnf_readout=1", "model.tnf_readout_max_samples=2"])
    assert config.for_data(("s1", "s2")).model.tnf_readout == 1.0
    off = config.for_data(("s1", "s2", "s3")).model
    assert off.tnf_readout == 0.0 and off.abundance_samples == 3
    assert "tnf_mean" not in BranchedVAE(off).state_dict() and embedding_dim(off) == off.latent_dim
    unlimited = config.with_overrides(["model.tnf_readout_max_samples=0"]).for_data(("s1", "s2", "s3"))
    assert unlimited.model.tnf_readout == 1.0


def test_log_variance_on_request(checkpoint, tmp_path, example_features):
    path = export(str(checkpoint), "onnx", tmp_path / "both.onnx", with_log_var=True)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding", "mu", "log_var"]
    embedding, mu, log_var = session.run(None, real_inputs(example_features, 4))
    assert embedding.shape == mu.shape == log_var.shape == (4, 8)
    np.testing.assert_allclose(embedding, mu / np.linalg.norm(mu, axis=1, keepdims=True), atol=1e-6)


MLFLOW_FRESH = """
import sys
for name in ("kmervae",):
    sys.modules[name] = None  # the package's code must not be needed
import mlflow, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
data = dict(np.load(sys.argv[2]))
np.save(sys.argv[3], model.predict(data))
print(model.metadata.get_input_schema().input_names())
"""


def test_mlflow_model_loads_in_a_fresh_process_without_the_package(exported, example_features, tmp_path):
    inputs = real_inputs(example_features, 16)
    np.savez(tmp_path / "inputs.npz", **inputs)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MLFLOW_FRESH,
            str(exported["mlflow"]),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['length', 'gc', 'kmer7', 'kmer4', 'kmer3']" in result.stdout
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), reference(exported["checkpoint"], inputs), rtol=1e-5, atol=1e-5
    )
    assert (exported["mlflow"] / "input_example.json").exists() or any(exported["mlflow"].glob("input_example*"))


def test_every_format_embeds_the_same_vectors(exported, example_features, tmp_path):
    vectors = {}
    for name, model in exported.items():
        summary = embed(str(model), example_features, tmp_path / f"{name}.parquet", batch_size=500, progress=False)
        ids, vectors[name], labels, *_ = read_embeddings(summary.out)
        assert summary.contigs == len(ids) == 1558 and labels is not None and vectors[name].shape == (1558, 8)
    for name in exported:
        np.testing.assert_allclose(vectors[name], vectors["checkpoint"], rtol=1e-5, atol=1e-5, err_msg=name)


def test_embed_errors_are_clear_and_leave_nothing(exported, example_features, tmp_path):
    with pytest.raises(InputNotFoundError, match="no such model"):
        embed(str(tmp_path / "none.pt"), example_features, tmp_path / "a.parquet")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(InputError, match="neither a kmervae checkpoint, TorchScript, ONNX nor MLflow model"):
        embed(str(junk), example_features, tmp_path / "a.parquet")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"contig_id": ["a"]}), foreign)
    with pytest.raises(InputError, match="not a kmervae feature file"):
        embed(str(exported["onnx"]), foreign, tmp_path / "a.parquet")
    (tmp_path / "exists.parquet").write_bytes(b"x")
    with pytest.raises(OutputError, match="exists"):
        embed(str(exported["onnx"]), example_features, tmp_path / "exists.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.parquet", "foreign.parquet", "junk.pt"]


def test_export_sources_and_errors(checkpoint, tmp_path):
    with pytest.raises(InputNotFoundError, match="not a checkpoint file, an MLflow run id or a models:/ URI"):
        export(str(tmp_path / "missing.pt"), "onnx", tmp_path / "x.onnx")
    with pytest.raises(InputError, match="no kmervae checkpoint found in MLflow"):
        export("0123456789abcdef0123456789abcdef", "onnx", tmp_path / "x.onnx")


def test_scores_of_a_perfect_and_a_random_embedding():
    rng = np.random.default_rng(0)
    labels = np.array([f"g{i % 5}" for i in range(400)], dtype=object)
    perfect = np.eye(5)[[int(v[1]) for v in labels]] + rng.normal(0, 0.01, (400, 5))
    good = score(perfect, labels)
    assert (
        good["knn1_acc"] == 1.0 and good["knn5_acc"] == 1.0 and good["kmeans_ari"] == 1.0 and good["silhouette"] > 0.9
    )
    shuffled = score(perfect, rng.permutation(labels))
    assert 0.1 < shuffled["knn5_acc"] < 0.35 and abs(shuffled["kmeans_ari"]) < 0.05


def test_evaluate_compares_with_the_baselines(exported, example_features, tmp_path):
    out = embed(str(exported["onnx"]), example_features, tmp_path / "emb.parquet", progress=False).out
    result = evaluate(out, example_features)
    assert list(result.scores) == ["vae", "tnf_zscore", "pca8_kmers"]
    assert result.contigs == 1558 and result.labels == 5
    for scores in result.scores.values():
        assert set(scores) == {"knn1_acc", "knn5_acc", "kmeans_ari", "silhouette", "nc_bins", "mq_bins"}
        assert 0.5 < scores["knn5_acc"] <= 1.0  # five genomes: chance is about 0.2
        assert 0 <= scores["nc_bins"] <= scores["mq_bins"] <= 5  # a near-complete bin is also a medium one
    assert result.scores["tnf_zscore"]["nc_bins"] >= 1  # TNF separates these five genomes (RESULTS: 5 of 10)
    for name, report in result.bins.items():  # each embedding's bins, per bin, as `kmervae bin` reports them
        assert report.near_complete == result.scores[name]["nc_bins"] and report.genomes == 5
        assert all(0 < b.purity <= 1 and 0 <= b.recall <= 1 for b in report.bins.values())
    assert "tnf_zscore" in format_table(result)
    unlabeled = evaluate(out)  # the embedding carries labels from the features
    assert unlabeled.labels == 5


def test_a_large_set_is_evaluated_on_a_documented_sample_with_bounded_memory(
    exported, example_features, abundance_features, tmp_path, monkeypatch
):
    """The limits a million contigs meet, scaled down: kNN on a sample, the baselines' counts
    decoded a chunk at a time (the same TNF and depth profile as all at once), PCA fitted on a
    sample and applied to every contig."""
    from kmervae.apply import evaluate as evaluation

    ids = np.asarray(FeatureTable.from_parquet(abundance_features).contig_ids, dtype=object)[::-1]  # any order
    whole = evaluation.baselines(abundance_features, ids, 8)
    monkeypatch.setattr(evaluation, "CHUNK_ROWS", 300)
    monkeypatch.setattr(evaluation, "PCA_FIT_MAX", 500)
    chunked = evaluation.baselines(abundance_features, ids, 8)
    np.testing.assert_allclose(chunked["tnf_zscore"], whole["tnf_zscore"], atol=1e-5)
    np.testing.assert_allclose(chunked["tnf_abundance"], whole["tnf_abundance"], atol=1e-5)
    assert chunked["pca8_kmers"].shape == whole["pca8_kmers"].shape == (len(ids), 8)
    labels = np.asarray(FeatureTable.from_parquet(abundance_features).labels, dtype=object)[::-1]
    full, sampled = score(whole["pca8_kmers"], labels), score(chunked["pca8_kmers"], labels)
    assert abs(full["knn5_acc"] - sampled["knn5_acc"]) < 0.05  # 500 contigs find the same main axes
    monkeypatch.setattr(evaluation, "KNN_MAX", 400)
    result = evaluation.evaluate(
        embed(str(exported["onnx"]), example_features, tmp_path / "emb.parquet", progress=False).out
    )
    assert result.sampled == {"knn": 400, "silhouette": 1558} and result.contigs == 1558
    assert "kNN accuracy on a sample of 400 contigs, silhouette on 1,558" in format_table(result)


def test_cli_export_embed_evaluate(exported, example_features, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "kmervae.cli", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    done = run("export", str(exported["checkpoint"]), "--format", "onnx", "--out", "enc.onnx")
    assert done.returncode == 0 and "exported  onnx model to enc.onnx" in done.stdout, done.stderr
    done = run("embed", "enc.onnx", str(example_features), "-o", "emb.parquet")
    assert done.returncode == 0 and "embedded  1,558 contigs into 8 dimensions" in done.stdout, done.stderr
    done = run("evaluate", "emb.parquet", "--labels-from-features", str(example_features))
    assert done.returncode == 0 and "pca8_kmers" in done.stdout and (tmp_path / "emb.eval.json").exists(), done.stderr
    stages = done.stderr.splitlines()  # progress: each stage as it ends, with the time so far
    assert stages[0].startswith("read 1,558 embedded contig(s) with 5 label(s) (") and len(stages) == 4
    assert stages[1].startswith("scored the embedding") and stages[3].startswith("scored the baseline pca8_kmers")
    bad = run("export", "nope.pt", "--format", "onnx", "--out", "x.onnx")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    missing = run("best", "--experiment", "nothing-here")
    assert missing.returncode == 2 and "no MLflow experiment 'nothing-here'" in missing.stderr


def test_register_an_export_and_embed_from_the_registry(exported, example_features, tmp_path, monkeypatch):
    from kmervae.apply.export import register

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = register(exported["mlflow"], "mlflow", "test-encoder", "champion")
    assert uri == "models:/test-encoder@champion"
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    summary = embed(uri, example_features, tmp_path / "from-registry.parquet", progress=False)
    assert not list((tmp_path / "tmp").iterdir())  # the downloaded model is not left behind
    vectors = read_embeddings(summary.out).vectors
    expected = read_embeddings(
        embed(str(exported["checkpoint"]), example_features, tmp_path / "ref.parquet", progress=False).out
    ).vectors
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-5)
    # The registered MLflow model keeps its checkpoint: it exports again to any format.
    assert export(uri, "torchscript", tmp_path / "again.pt").exists()
    # Resolving models:/ URIs must not redirect the whole process (mlflow.set_tracking_uri sets the env var).
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_evaluation_is_logged_to_an_mlflow_run(exported, example_features, tmp_path, monkeypatch):
    from kmervae.apply.best import download_checkpoint
    from kmervae.apply.evaluate import log_to_mlflow, write_json
    from kmervae.tracking.tracker import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    out = embed(str(exported["onnx"]), example_features, tmp_path / "emb.parquet", progress=False).out
    result = evaluate(out, example_features)
    tracker = Tracker("tests", "eval")
    log_to_mlflow(result, tracker.run_id, write_json(result, tmp_path / "eval.json"))
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    assert metrics["eval/vae/knn5_acc"] == result.scores["vae"]["knn5_acc"] and "eval/tnf_zscore/kmeans_ari" in metrics
    with pytest.raises(InputError, match="no such run"):
        log_to_mlflow(result, "0" * 32, tmp_path / "eval.json")
    with pytest.raises(InputError, match="no kmervae checkpoint found in MLflow"):
        download_checkpoint(tracker.run_id, tmp_path / "nothing")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(
        ConfigError, match=r"--mlflow-run: MLflow at http://127.0.0.1:9 is unreachable; the results are in .*eval.json"
    ):
        log_to_mlflow(result, tracker.run_id, tmp_path / "eval.json")
    assert (tmp_path / "eval.json").exists()  # the scores are kept


def test_unlabeled_embeddings_get_silhouette_and_active_units(exported, example_features, tmp_path):
    out = embed(str(exported["onnx"]), example_features, tmp_path / "emb.parquet", progress=False).out
    table = pq.read_table(out).drop_columns(["label"])
    pq.write_table(table, tmp_path / "unlabeled.parquet")
    result = evaluate(tmp_path / "unlabeled.parquet")
    assert result.labels is None and list(result.scores) == ["vae"]
    assert set(result.scores["vae"]) == {"silhouette_kmeans", "active_units"}
    # Active units by their definition (Burda et al. 2016), computed here from the vectors:
    # latent dimensions whose mean varies across contigs with variance above 0.01.
    vectors = read_embeddings(tmp_path / "unlabeled.parquet").vectors
    variances = vectors.astype(np.float64).var(axis=0)
    assert result.scores["vae"]["active_units"] == float((variances > 0.01).sum())
    # The count follows the data: embeddings with two dimensions flattened lose two units.
    flat = vectors.copy()
    live = np.flatnonzero(variances > 0.01)[:2]
    flat[:, live] = flat[:, live].mean(axis=0)
    flattened = pa.table(
        {
            "contig_id": table.column("contig_id"),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), flat.shape[1]),
        }
    )
    pq.write_table(flattened, tmp_path / "flat.parquet")
    assert evaluate(tmp_path / "flat.parquet").scores["vae"]["active_units"] == float(
        (variances > 0.01).sum() - len(live)
    )


def test_utf8_contig_ids_go_through_featurize_train_and_embed(tmp_path):
    """Ids are UTF-8 text end to end (only undecodable bytes are refused, by the reader)."""
    import random

    from kmervae.features.featurize import FeaturizeSettings, featurize
    from tests.conftest import write_fasta

    rng = random.Random(5)
    names = [f"ctg_\u00fc{i} sample=\u00e9t\u00e9" if i % 2 else f"contig_\u4e2d{i}" for i in range(24)]
    write_fasta(tmp_path / "ids.fa", [(name, "".join(rng.choice("ACGT") for _ in range(6000))) for name in names])
    featurize([tmp_path / "ids.fa"], tmp_path / "features", FeaturizeSettings(fragment_length=3000))
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(["train.epochs=1", "data.val_fraction=0.25"])
    trained = fit_local(tmp_path / "features", config, tmp_path / "run", log=lambda line: None)
    summary = embed(str(trained.best_checkpoint), tmp_path / "features", tmp_path / "emb.parquet", progress=False)
    ids, vectors, *_ = read_embeddings(summary.out)
    expected = {f"{name.split()[0]}:{start}-{start + 2999}" for name in names for start in (1, 3001)}
    assert set(ids) == expected and len(ids) == 48 and np.isfinite(vectors).all()
