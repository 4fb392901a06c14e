"""Does the label-free objective rank a sweep's trials as the labelled one does? And every trial's settings.

    python bench/objective_agreement.py --mlflow-dir DIR --sweep NAME [--label val/knn_acc]

Reads a finished sweep's trials from its MLflow store (the child runs of the sweep NAME)
and prints a Markdown table of every trial: the settings the space varied, the epochs it
ran (ASHA stops weak trials), its best epoch by `--label` with that epoch's `val/knn_acc`,
`val/kmeans_ari` and `val/view_agreement`, and the last epoch's. Then the Spearman rank
correlation between `val/view_agreement` and `--label` over the trials (at their last
epoch, and at their best epoch), and over every epoch of every trial.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SCORES = ("val/knn_acc", "val/kmeans_ari", "val/view_agreement")


def short(value: str) -> str:
    """A parameter value in a few characters."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.3g}" if not number.is_integer() else str(int(number))


def main() -> None:
    from mlflow import MlflowClient
    from scipy.stats import spearmanr

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlflow-dir", type=Path, required=True)
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--experiment", default="kmervae-sweeps")
    parser.add_argument("--label", default="val/knn_acc", help="the labelled objective to compare with")
    args = parser.parse_args()
    client = MlflowClient(f"sqlite:///{args.mlflow_dir.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name(args.experiment)
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`kmervae.sweep` = '{args.sweep}' and tags.`kmervae.trial_id` != ''"
    )
    runs = sorted(runs, key=lambda r: r.info.start_time)
    varied = sorted(
        {k[len("trial.") :] for r in runs for k in r.data.params if k.startswith("trial.") and k != "trial.id"}
    )
    trials, epochs = [], []
    for run in runs:
        history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} for key in SCORES}
        steps = sorted(set.intersection(*(set(h) for h in history.values())))
        if not steps:
            continue
        best = max(steps, key=lambda s: history[args.label][s])
        epochs += [(history["val/view_agreement"][s], history[args.label][s]) for s in steps]
        trials.append((run, steps, best, history))
    head = [*(k.split(".", 1)[1] for k in varied), "epochs", "best epoch", *SCORES, "last: " + args.label]
    print("| trial | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for run, steps, best, history in trials:
        params = [short(run.data.params.get(f"trial.{k}", "")) for k in varied]
        scores = [f"{history[k][best]:.4f}" for k in SCORES]
        row = [run.data.tags["kmervae.trial_id"], *params, str(len(steps)), str(best + 1), *scores]
        print("| " + " | ".join(row + [f"{history[args.label][steps[-1]]:.4f}"]) + " |")
    last = [(h["val/view_agreement"][s[-1]], h[args.label][s[-1]]) for _, s, _, h in trials]
    at_best = [(h["val/view_agreement"][b], h[args.label][b]) for _, _, b, h in trials]
    for name, pairs in (("trials, last epoch", last), ("trials, best epoch", at_best), ("every epoch", epochs)):
        rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
        print(f"Spearman(val/view_agreement, {args.label}) over {name} (n = {len(pairs)}): {rho:.3f}")


if __name__ == "__main__":
    main()
