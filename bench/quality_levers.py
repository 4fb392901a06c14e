"""Which levers make the branched VAE's embeddings beat TNF and PCA? Train on a GPU, score here.

    # on a GPU host (torch, numpy, pyarrow only): train every configuration, save the embeddings
    python bench/quality_levers.py train --features F5 [--features F2] --out DIR [--epochs 60] [--budget-s 420]
    # where scikit-learn is installed: score them against TNF and PCA on the same contigs
    python bench/quality_levers.py score --features F5 [--features F2] --out DIR

F5 (F2) is the ten shared genomes cut into 5 kb (2 kb) contigs with labels. Two protocols:
`heldout` trains on six genomes and embeds the contigs of the four in `HELD_OUT` (genomes
never seen); `all` trains on the ten and embeds the same contigs (as VAMB is used). Each
configuration is `final` with latent 32 plus the overrides in `CONFIGS`; the embedding is
the readout (L2-normalised latent means) of the last checkpoint. Scores: kNN accuracy (k = 1,
5, cosine, 5-fold), k-means ARI and silhouette (`kmervae.apply.evaluate.score`), with the
baselines of `kmervae evaluate` on the same contigs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedding_quality import split_by_genome  # noqa: E402  (the same four genomes held out)

from kmervae.base.feature_table import FeatureTable  # noqa: E402
from kmervae.core.config import RunConfig, preset  # noqa: E402
from kmervae.core.data import CountBatch, InMemoryData, TensorData, load_splits  # noqa: E402
from kmervae.core.run_setup import plan_run, start_run  # noqa: E402

SMALL = ["model.kmer7_widths=[256]", "model.kmer4_widths=[64]", "model.kmer3_widths=[32]", "model.trunk_widths=[128]"]
COMMON = ["model.latent_dim=32", "train.plateau_patience=10", "train.batch_size=256"]
CONFIGS = {
    # the defaults today: scale 1, beta 1 (posterior collapse expected)
    "default": [],
    # the seed's scale: the four group MSEs times 2,090, beta 1
    "seed-scale": ["loss.scale=2090"],
    # seed scale, KL weakened and floored
    "scale-beta0.01-fb": ["loss.scale=2090", "loss.beta=0.01", "loss.free_bits=0.05", "loss.beta_warmup_epochs=10"],
    # z-scored inputs, small KL with free bits
    "zscore-beta0.01-fb": [
        "model.input_norm=zscore", "loss.beta=0.01", "loss.free_bits=0.05", "loss.beta_warmup_epochs=10",
    ],
    # cross-view reconstruction without KL (an autoencoder of what two halves share)
    "xview": ["model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0"],
    # the same with the 7-mer term down-weighted (it dominates the target with noise)
    "xview-w7=0.1": ["model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1"],
    # cross-view with a small, floored KL and cyclical annealing
    "xview-w7=0.1-kl": [
        "model.input_norm=zscore", "loss.cross_view=true", "loss.w7=0.1", "loss.beta=0.01",
        "loss.free_bits=0.05", "loss.beta_schedule=cyclical", "loss.beta_cycle_epochs=20",
    ],
    # centred log-ratio inputs, cross-view, 7-mers down-weighted
    "clr-xview-w7=0.1": ["model.input_norm=clr", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1"],
    # hypothesis: `final` (27.8M parameters) fits contig noise on 3,300 contigs; one layer per branch
    "small-xview-w7=0.1": [*SMALL, "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1"],
    "small-xview-w7=0.1-reg": [
        *SMALL, "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1",
        "model.input_dropout=0.2", "train.weight_decay=1e-4",
    ],
    "small-default": SMALL,
    # hypothesis: with log(frequency + 1e-6), a 5 kb contig's 7-mers (mostly counts 0 or 1) are
    # presence noise of +-6 that swamps the 4-mer signal; a larger pseudo-frequency compresses it
    "small-xview-w7=0.1-eps1e-3": [
        *SMALL, "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1", "model.log_eps=1e-3",
    ],
    "small-xview-eps1e-3-noz": [*SMALL, "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1", "model.log_eps=1e-3"],
    # contrastive levers (issue 14): InfoNCE between the two views; a supervised contrastive term on
    # the training genomes' labels (genomes never seen are still never trained on)
    "xview-infonce": [
        "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1", "loss.infonce=1",
        "loss.temperature=0.1",
    ],
    # InfoNCE pushes apart every other contig, its own genome's too; a higher temperature
    # tolerates near negatives (Wang & Liu 2021)
    "xview-infonce-t0.5": [
        "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1", "loss.infonce=1",
        "loss.temperature=0.5",
    ],
    "xview-infonce-t0.25": [
        "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1", "loss.infonce=1",
        "loss.temperature=0.25",
    ],
    # hypothesis: the debiased loss (Chuang et al. 2020) stops pushing a genome's own contigs apart
    "xview-infonce-debias0.1": [
        "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1", "loss.infonce=1",
        "loss.temperature=0.1", "loss.infonce_prior=0.1",
    ],
    "xview-infonce-t1": [
        "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1", "loss.infonce=1",
        "loss.temperature=1",
    ],
    "supcon": ["model.input_norm=zscore", "loss.beta=0", "loss.w7=0.1", "loss.supcon=1", "loss.temperature=0.1"],
    "small-xview-infonce": [
        *SMALL, "model.input_norm=zscore", "loss.cross_view=true", "loss.beta=0", "loss.w7=0.1", "loss.infonce=1",
        "loss.temperature=0.1",
    ],
    "small-supcon": [
        *SMALL, "model.input_norm=zscore", "loss.beta=0", "loss.w7=0.1", "loss.supcon=1", "loss.temperature=0.1",
    ],
    "small-supcon-only": [
        *SMALL, "model.input_norm=zscore", "loss.beta=0", "loss.scale=0.001", "loss.supcon=1",
        "loss.temperature=0.1",
    ],
}  # fmt: skip


def protocols(features: Path, out: Path) -> dict[str, tuple[Path, Path]]:
    """{protocol: (training dataset, dataset to embed)}: the held-out split of embedding_quality.py, and all."""
    train_dir, held_dir = split_by_genome(features, out)
    return {"heldout": (train_dir, held_dir), "all": (features, features)}


def fit(
    features: Path, config: RunConfig, device: torch.device, on_epoch=lambda *_: None
) -> tuple[torch.nn.Module, list[dict]]:
    """The engine's epoch loop on one process, without writing checkpoints (a 27.8M-parameter
    checkpoint with Adam state is 330 MB: saving one per epoch took most of a GPU epoch).
    `on_epoch(epoch, model)` sees the model after each epoch (BatchNorm statistics recomputed)."""
    plan = plan_run(features, config)
    train, val = load_splits(features, plan.config.data)
    with start_run(plan.config, device) as run:
        generator = torch.Generator(device=device).manual_seed(config.train.seed)
        data = InMemoryData(train.to(device), val.to(device), config.train.batch_size, generator)
        history = run.train(data, device=device, on_epoch=lambda epoch, *_: on_epoch(epoch, run.model))
    return run.model, history


@torch.no_grad()
def embed(model: torch.nn.Module, features: Path, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(contig ids, readout) of every contig of `features` with the trained model (eval mode)."""
    model = model.eval()
    table = FeatureTable.from_parquet(features)
    data = TensorData.from_table(table, np.arange(len(table)))
    parts = [model(*CountBatch(*batch).to(device)).embedding.float().cpu() for batch in data.batches(4096)]
    return table.contig_ids, torch.cat(parts).numpy()


def train(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    arrays, runs = {}, []
    names = args.configs or list(CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        for features in args.features:
            size = features.name
            splits = protocols(features, Path(tmp) / size)
            for protocol in args.protocols:
                train_dir, embed_dir = splits[protocol]
                for name in names:
                    if time.perf_counter() - started > args.budget_s:
                        print(
                            f"budget of {args.budget_s} s spent: {size}/{protocol}/{name} and later not run", flush=True
                        )
                        continue
                    overrides = COMMON + [f"train.epochs={args.epochs}", f"train.device={device.type}"]
                    overrides += [f"train.precision={args.precision}"] + CONFIGS[name]
                    config = RunConfig(model=preset("final")).with_overrides(overrides)
                    t0 = time.perf_counter()
                    key = f"{size}/{protocol}/{name}"

                    def snapshot(epoch, model, key=key, embed_dir=embed_dir):
                        if args.every_epoch and epoch + 1 < args.epochs:  # the last epoch is stored below
                            arrays[f"{key}@{epoch + 1}"] = embed(model, embed_dir, device)[1]

                    model, history = fit(train_dir, config, device, snapshot)
                    ids, vectors = embed(model, embed_dir, device)
                    arrays[key] = vectors
                    arrays[f"{size}/{protocol}/ids"] = ids.astype(str)
                    last = history[-1]
                    runs.append({
                        "key": key, "overrides": CONFIGS[name], "seconds": round(time.perf_counter() - t0, 1),
                        "epochs": len(history), "val/kl": last["val/kl"],
                        "val/active_units": last["val/active_units"], "samples_per_s": last["samples_per_s"],
                        "val/knn_acc (training genomes)": last.get("val/knn_acc"),
                    })  # fmt: skip
                    print(json.dumps(runs[-1]), flush=True)
    np.savez_compressed(args.out / "embeddings.npz", **arrays)
    (args.out / "runs.json").write_text(
        json.dumps(
            {
                "device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
                "epochs": args.epochs,
                "runs": runs,
            },
            indent=1,
        )
    )


def score(args: argparse.Namespace) -> None:
    from kmervae.apply.evaluate import baselines
    from kmervae.apply.evaluate import score as score_embedding

    stored = np.load(args.out / "embeddings.npz")
    runs = {r["key"]: r for r in json.loads((args.out / "runs.json").read_text())["runs"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for features in args.features:
            size = features.name
            splits = protocols(features, Path(tmp) / size)
            for protocol in ("heldout", "all"):
                if f"{size}/{protocol}/ids" not in stored:
                    continue
                ids = stored[f"{size}/{protocol}/ids"].astype(object)
                table = FeatureTable.from_parquet(splits[protocol][1])
                label_of = dict(zip(table.contig_ids, table.labels, strict=True))
                labels = np.array([label_of[c] for c in ids], dtype=object)
                for name, vectors in baselines(splits[protocol][1], ids, 32).items():
                    rows.append(
                        {"data": size, "protocol": protocol, "method": name, **score_embedding(vectors, labels)}
                    )
                for key in stored.files:
                    if key.startswith(f"{size}/{protocol}/") and not key.endswith("/ids"):
                        run = runs.get(key, {}) if "@" not in key else {}
                        s = score_embedding(stored[key], labels)
                        rows.append(
                            {
                                "data": size,
                                "protocol": protocol,
                                "method": key.split("/")[-1],
                                **s,
                                "active": run.get("val/active_units"),
                                "seconds": run.get("seconds"),
                            }
                        )
                        print(json.dumps(rows[-1]), flush=True)
    (args.out / "scores.json").write_text(json.dumps(rows, indent=1))
    print("| data | protocol | method | 1-NN | 5-NN | k-means ARI | silhouette | active units | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        active = "" if r.get("active") is None else f"{r['active']:.0f}"
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        scores = " | ".join(f"{r[k]:.3f}" for k in ("knn1_acc", "knn5_acc", "kmeans_ari", "silhouette"))
        print(f"| {r['data']} | {r['protocol']} | {r['method']} | {scores} | {active} | {secs} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["train", "score"])
    parser.add_argument("--features", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS))
    parser.add_argument("--every-epoch", action="store_true", help="also embed (and score) after every epoch")
    parser.add_argument("--protocols", nargs="*", choices=["heldout", "all"], default=["heldout", "all"])
    args = parser.parse_args()
    train(args) if args.step == "train" else score(args)


if __name__ == "__main__":
    main()
