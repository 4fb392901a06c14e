"""Embedding quality on genomes the model never saw: the VAE against TNF and PCA baselines.

    python bench/embedding_quality.py --features FEATURES [--preset final] [--epochs 100] [--device auto]

FEATURES is the ten shared genomes cut into 5 kb contigs with labels (`kmervae featurize
../shared/genomes/*.fna.gz --fragment-length 5000 --label-from-filename -o FEATURES`).
The contigs of four genomes are held out; the model trains (local engine) on the other
six; then the held-out contigs are embedded with the best checkpoint and scored with
kNN accuracy (k = 1, 5), k-means ARI and silhouette, side by side with z-scored TNF and
PCA of all k-mer log-frequencies (same dimension as the latent space) on the same
contigs. Needs torch, numpy, pyarrow and scikit-learn only (runs on a bare GPU host).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kmervae.apply.evaluate import Evaluation, baselines, format_table, score  # noqa: E402
from kmervae.apply.export import Encoder  # noqa: E402
from kmervae.base.feature_table import FeatureTable, dataset_files  # noqa: E402
from kmervae.core.checkpoint import load_checkpoint  # noqa: E402
from kmervae.core.config import RunConfig, preset  # noqa: E402
from kmervae.core.run_setup import fit_local  # noqa: E402

HELD_OUT = [
    "Chlamydia_trachomatis",
    "Helicobacter_pylori_G27",
    "Methanobrevibacter_ruminantium_M1",
    "Staphylococcus_aureus_N315",
]


def split_by_genome(features: Path, out: Path) -> tuple[Path, Path]:
    """Write the training genomes and the held-out genomes as two feature datasets."""
    files = dataset_files(features)
    train_dir, test_dir = out / "train", out / "held_out"
    for folder in (train_dir, test_dir):
        folder.mkdir(parents=True)
    for path in files.paths:
        table = pq.read_table(path)
        held = pc.is_in(table.column("label"), value_set=pc.cast(HELD_OUT, table.schema.field("label").type))
        pq.write_table(table.filter(pc.invert(held)), train_dir / path.name)
        pq.write_table(table.filter(held), test_dir / path.name)
    return train_dir, test_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--preset", default="final")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dir, test_dir = split_by_genome(args.features, tmp)
        config = RunConfig(model=preset(args.preset)).with_overrides(
            [
                f"train.epochs={args.epochs}",
                f"train.batch_size={args.batch_size}",
                f"train.device={args.device}",
                "train.plateau_patience=10",
                "loss.beta_warmup_epochs=10",
                *args.overrides,
            ]
        )
        started = time.perf_counter()
        result = fit_local(
            train_dir,
            config,
            tmp / "run",
            log=lambda line: (
                print(line, flush=True)
                if "epoch" in line
                and (
                    line.split()[1].split("/")[0] in ("1", str(args.epochs))
                    or int(line.split()[1].split("/")[0]) % 10 == 0
                )
                else None
            ),
        )
        seconds = time.perf_counter() - started
        checkpoint = load_checkpoint(result.best_checkpoint)
        table = FeatureTable.from_parquet(test_dir)
        encoder = Encoder(checkpoint.build_model())
        with torch.no_grad():
            mu = torch.cat(
                [
                    encoder(
                        *(
                            torch.from_numpy(np.ascontiguousarray(a[lo : lo + 1024]))
                            for a in (
                                table.length,
                                table.gc,
                                table.kmer7.astype(np.int32),
                                table.kmer4.astype(np.int32),
                                table.kmer3.astype(np.int32),
                            )
                        )
                    )
                    for lo in range(0, len(table), 1024)
                ]
            ).numpy()
        labels = table.labels
        scores = {"vae": score(mu, labels)}
        for name, values in baselines(test_dir, table.contig_ids, mu.shape[1]).items():
            scores[name] = score(values, labels)
    report = {
        "held_out_genomes": HELD_OUT,
        "held_out_contigs": int(len(table)),
        "preset": args.preset,
        "epochs": args.epochs,
        "best_epoch": checkpoint.epoch,
        "best_val_loss": checkpoint.metrics["val/loss"],
        "train_seconds": round(seconds, 1),
        "device": str(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
        "contigs": int(len(table)),
        "labels": len(HELD_OUT),
        "latent_dim": int(mu.shape[1]),
        "scores": scores,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "scores"}))
    print(format_table(Evaluation(len(table), int(mu.shape[1]), len(HELD_OUT), {}, scores)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
