"""Experiment 4: AlexNet's ablations in small, on the small AlexNet and the embedded MNIST.

    python experiments/alexnet_ablations.py            # about 10 minutes on a 2-core CPU
    python experiments/alexnet_ablations.py --quick

ReLU vs tanh (the paper: ReLUs reach 25% training error about six times sooner than tanh on
CIFAR-10), LRN on/off, overlapping vs non-overlapping pooling, dropout on/off, and the paper's
update rule (`alexnet_sgd`) vs Adam. Every variant is the default recipe with one change,
trained for the same number of steps with several seeds; training error is logged every 5
steps and the steps to reach 25% training error are read off that log.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
from common import curve, mean_std, parser, pyplot, small_alexnet_config, train_run, write_results

VARIANTS = {
    "baseline (ReLU, LRN, 3/2 pool, dropout .25, momentum)": {},
    "tanh": {"model.activation": "tanh"},
    "no LRN": {"model.lrn": False},
    "non-overlapping pool (2/2)": {"model.overlapping_pool": False},
    "no dropout": {"model.dropout_rate": 0.0},
    "alexnet_sgd (wd 5e-4)": {"optimizer.name": "alexnet_sgd"},
    "adam (lr 1e-3)": {
        "optimizer.name": "adam",
        "optimizer.learning_rate": 1e-3,
        "optimizer.hparams.momentum": None,
    },
}


def steps_to(rows, threshold=0.25):
    steps, err = curve(rows, "train", "error")
    hit = np.flatnonzero(err <= threshold)
    return float(steps[hit[0]]) if len(hit) else float("nan")


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "alexnet_ablations").parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(1 if args.quick else args.seeds)
    epochs = 3.0
    results, curves = {}, {}
    variants = dict(list(VARIANTS.items())[:2]) if args.quick else VARIANTS  # quick: ReLU, tanh
    for name, overrides in variants.items():
        runs = []
        for seed in seeds:
            c = small_alexnet_config(args.quick, **overrides, seed=seed, num_epochs=epochs)
            c.schedule.name = "constant"
            result, rows = train_run(c, out / "runs" / f"{len(results)}-{seed}")
            runs.append((result, rows))
        curves[name] = runs[0][1]
        results[name] = {
            "steps_to_25pct_train_error": mean_std([steps_to(r) for _, r in runs]),
            "final_test_error": mean_std([res["error"] for res, _ in runs]),
            "seconds": mean_std([res["wall_seconds"] for res, _ in runs]),
        }
        print(
            name,
            results[name]["steps_to_25pct_train_error"],
            results[name]["final_test_error"],
            flush=True,
        )
    relu = results[next(iter(VARIANTS))]["steps_to_25pct_train_error"]["mean"]
    tanh = results["tanh"]["steps_to_25pct_train_error"]["mean"]
    summary = {"tanh_over_relu_steps_to_25pct": tanh / relu if relu else float("nan")}

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for name, rows in curves.items():
        s, e = curve(rows, "train", "error")
        axes[0].plot(s, e, label=name)
    axes[0].axhline(0.25, color="k", ls=":", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step (batch 64)")
    axes[0].set_ylabel("training error (logged every 5 steps)")
    axes[0].legend(fontsize=7)
    names = list(results)
    means = [results[n]["final_test_error"]["mean"] for n in names]
    stds = [results[n]["final_test_error"]["std"] for n in names]
    axes[1].barh(range(len(names)), means, xerr=stds)
    axes[1].set_yticks(range(len(names)), names, fontsize=7)
    axes[1].set_xlabel(f"test error after {epochs:g} epochs (mean ± std over {len(seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(out / "ablations.png", dpi=100)
    plt.close(fig)
    write_results(
        out,
        "alexnet_ablations",
        {"variants": results, "summary": summary, "epochs": epochs},
        started,
    )
    return results


if __name__ == "__main__":
    main()
