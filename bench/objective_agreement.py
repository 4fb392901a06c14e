"""Does the label-free objective rank a sweep's trials as the labelled one does? And every trial's settings.

    python bench/objective_agreement.py --mlflow-dir DIR --sweep NAME [--label val/knn_acc|val/nc_bins]

Reads a finished sweep's trials from its MLflow store (the child runs of the sweep NAME)
and prints a Markdown table of every trial: the settings the space varied, the epochs it
ran (ASHA stops weak trials), its best epoch by `--label` with that epoch's `val/knn_acc`,
`val/kmeans_ari`, `val/link_agreement`, `val/view_agreement` and `val/est_nc_bins` (where
logged), and the last epoch's. Then
the Spearman rank correlation of each label-free key with each labelled one over the trials
(at their last epoch, and at their best epoch by `--label`), and over every epoch of every trial.

    python bench/objective_agreement.py --checkpoints SWEEP_STORAGE_DIR --features FEATURES

scores other label-free candidates on every trial's best checkpoint (`trials/*/outputs/best.pt`)
over its own validation contigs, against its `val/knn_acc` and `val/kmeans_ari` there: view
agreement, link agreement (consecutive fragments of one record as must-links,
`metrics.link_agreement`), the share of must-linked fragments whose partner is among their 50
nearest contigs, the adjusted
Rand index between k-means partitions (k = 4, 8, 16) of the two halves' readouts, and the
overlap of each contig's 10 nearest neighbours among A halves and among B halves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LABELLED = ("val/knn_acc", "val/kmeans_ari")
LABEL_FREE = ("val/link_agreement", "val/view_agreement", "val/est_nc_bins")


def short(value: str) -> str:
    """A parameter value in a few characters."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.3g}" if not number.is_integer() else str(int(number))


def partner_among_nearest(embeddings, links, k: int) -> float:
    """Share of must-linked fragments (`metrics.link_agreement`'s pairs) whose partner is among
    their `k` nearest contigs: a local variant of link agreement, as kNN accuracy is local."""
    import numpy as np
    import torch

    from kmervae.core.metrics import must_link_pairs, readout

    pairs = must_link_pairs(links)
    anchors = torch.from_numpy(np.concatenate([pairs[:, 0], pairs[:, 1]]))
    partners = torch.from_numpy(np.concatenate([pairs[:, 1], pairs[:, 0]]))
    x = readout(embeddings.double())
    sim = x[anchors] @ x.T
    sim[torch.arange(len(anchors)), anchors] = -torch.inf  # not its own neighbour
    own = sim[torch.arange(len(anchors)), partners]
    return float(((sim > own[:, None]).sum(dim=1) < k).double().mean())


def checkpoint_candidates(storage: Path, features: Path) -> None:
    """Label-free candidates on each trial's best checkpoint, ranked against its val/knn_acc."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from kmervae.core.checkpoint import load_checkpoint
    from kmervae.core.data import link_keys, load_splits
    from kmervae.core.engine import split_batch
    from kmervae.core.metrics import (
        VIEW_CONTIGS,
        VIEW_SEED,
        kmeans_ari,
        knn_accuracy,
        link_agreement,
        readout,
        view_agreement,
    )

    names = [
        "view agreement", "link agreement", "must-link partner among the 50 nearest", "halves' k-means ARI, k=4",
        "k=8", "k=16", "10-NN overlap of the halves",
    ]  # fmt: skip
    rows = []
    for path in sorted(storage.glob("trials/*/outputs/best.pt")):
        checkpoint = load_checkpoint(path)
        model = checkpoint.build_model().eval()
        _, val = load_splits(features, checkpoint.config.data)
        generator = torch.Generator().manual_seed(VIEW_SEED)
        whole, a, b = [], [], []
        with torch.no_grad():
            for batch in val.batches(512):
                half_a, half_b = split_batch(batch, 0.5, generator)
                whole.append(model(*batch).embedding.double())
                a.append(model(*half_a).embedding.double())
                b.append(model(*half_b).embedding.double())
        whole, a, b = torch.cat(whole), readout(torch.cat(a)), readout(torch.cat(b))
        labels = [int(c) for c in val.codes]
        knn, ari = knn_accuracy(whole, labels), kmeans_ari(whole, labels)
        scores = [
            view_agreement(a[:VIEW_CONTIGS], b[:VIEW_CONTIGS]),
            link_agreement(whole, torch.from_numpy(link_keys(val.contig_ids))),
            partner_among_nearest(whole, link_keys(val.contig_ids), 50),
        ]
        for k in (4, 8, 16):
            parts = [KMeans(k, n_init=3, random_state=0).fit_predict(x.numpy()) for x in (a, b)]
            scores.append(adjusted_rand_score(*parts))
        near = [(x @ x.T).fill_diagonal_(-2).topk(10, dim=1).indices for x in (a, b)]
        overlap = [len(set(p.tolist()) & set(q.tolist())) / 10 for p, q in zip(*near, strict=True)]
        scores.append(float(np.mean(overlap)))
        rows.append((knn, ari, *scores))
        print(f"{path.parent.parent.name}: knn {knn:.4f}, ARI {ari:.4f}, " + ", ".join(f"{s:.4f}" for s in scores))
    for i, name in enumerate(names, start=2):
        knn_rho = spearmanr([r[i] for r in rows], [r[0] for r in rows]).statistic
        ari_rho = spearmanr([r[i] for r in rows], [r[1] for r in rows]).statistic
        rhos = f"with val/knn_acc {knn_rho:.3f}, val/kmeans_ari {ari_rho:.3f}"
        print(f"Spearman({name}) over {len(rows)} trials: {rhos}  ")


SEED_INDEX = "__trial_index__"  # kmervae.distributed.sweep.SEED_INDEX: a repeat's index (`--seeds`)
FREE = "val/est_nc_bins"


def print_settings(trials, label: str, spearmanr) -> None:
    """A sweep with several seeds per setting: each setting's trials (seeds), the median of their
    best epochs by the label-free objective (what the sweep ranked on) and by `label`, and how the
    two rank the settings."""
    settings: dict[tuple, list] = {}
    for run, steps, _, history in trials:
        key = tuple(
            sorted((k, v) for k, v in run.data.params.items() if k.startswith("trial.") and k not in
                   ("trial.id", f"trial.{SEED_INDEX}"))
        )  # fmt: skip
        settings.setdefault(key, []).append((steps, history))
    print(f"| setting | seeds | {FREE} at each seed's best epoch by it | {label} there | median {FREE} | "
          f"median {label} there | median best {label} |")  # fmt: skip
    print("|---" * 7 + "|")
    rows = []
    for key, seeds in settings.items():
        by_free = [max(s, key=lambda step, h=h: h[FREE][step]) for s, h in seeds]
        free = [h[FREE][b] for b, (_, h) in zip(by_free, seeds, strict=True)]
        true_there = [h[label][b] for b, (_, h) in zip(by_free, seeds, strict=True)]
        best_true = [max(h[label][step] for step in s) for s, h in seeds]
        rows.append((float(np.median(free)), float(np.median(true_there)), float(np.median(best_true))))
        name = ", ".join(f"{k.split('.', 2)[-1]}={short(v)}" for k, v in key)
        medians = f"{rows[-1][0]:.3f} | {rows[-1][1]:g} | {rows[-1][2]:g}"
        print(f"| {name} | {len(seeds)} | {' / '.join(f'{v:.3f}' for v in free)} | "
              f"{' / '.join(f'{v:g}' for v in true_there)} | {medians} |")  # fmt: skip
    if len(rows) > 2:
        rho = spearmanr([r[0] for r in rows], [r[1] for r in rows]).statistic
        print(f"\nSpearman over settings (n = {len(rows)}) of median {FREE} with median {label} there: {rho:.3f}  ")
    print()


def main() -> None:
    from mlflow import MlflowClient
    from scipy.stats import spearmanr

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlflow-dir", type=Path)
    parser.add_argument("--sweep")
    parser.add_argument("--checkpoints", type=Path, help="a sweep's storage folder: score candidates on its trials")
    parser.add_argument("--features", type=Path, help="the sweep's feature dataset (with --checkpoints)")
    parser.add_argument("--experiment", default="kmervae-sweeps")
    parser.add_argument("--label", default="val/knn_acc", help="the labelled objective to compare with")
    args = parser.parse_args()
    if args.checkpoints is not None:
        return checkpoint_candidates(args.checkpoints, args.features)
    labelled = tuple(dict.fromkeys((*LABELLED, args.label)))  # val/nc_bins joins the labelled scores
    scores_of = labelled + LABEL_FREE
    client = MlflowClient(f"sqlite:///{args.mlflow_dir.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name(args.experiment)
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`kmervae.sweep` = '{args.sweep}' and tags.`kmervae.trial_id` != ''"
    )
    runs = sorted(runs, key=lambda r: r.info.start_time)
    varied = sorted(
        {k[len("trial.") :] for r in runs for k in r.data.params if k.startswith("trial.") and k != "trial.id"}
    )
    trials = []
    for run in runs:
        history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} for key in scores_of}
        known = [set(h) for key, h in history.items() if h]  # a sweep older than a key did not log it
        steps = sorted(set.intersection(*known))
        if not steps:
            continue
        best = max(steps, key=lambda s: history[args.label][s])
        trials.append((run, steps, best, history))
    head = [*(k.split(".", 1)[-1] for k in varied), "epochs run", "best epoch", *scores_of, "last: " + args.label]
    print("| trial | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for run, steps, best, history in trials:
        params = [short(run.data.params.get(f"trial.{k}", "")) for k in varied]
        scores = [f"{history[k][best]:.4f}" if best in history[k] else "" for k in scores_of]
        row = [run.data.tags["kmervae.trial_id"], *params, str(len(steps)), str(best + 1), *scores]
        print("| " + " | ".join(row + [f"{history[args.label][steps[-1]]:.4f}"]) + " |")
    print()
    if any(f"trial.{SEED_INDEX}" in run.data.params for run, *_ in trials):
        print_settings(trials, args.label, spearmanr)
    for free in LABEL_FREE:
        if not all(history[free] for *_, history in trials):
            continue
        for label in labelled:
            at = {
                "trials, last epoch": [(h[free][s[-1]], h[label][s[-1]]) for _, s, _, h in trials],
                "trials, best epoch": [(h[free][b], h[label][b]) for _, _, b, h in trials],
                "every epoch": [(h[free][step], h[label][step]) for _, s, _, h in trials for step in s],
            }
            for name, pairs in at.items():
                rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
                print(f"Spearman({free}, {label}) over {name} (n = {len(pairs)}): {rho:.3f}  ")


if __name__ == "__main__":
    main()
