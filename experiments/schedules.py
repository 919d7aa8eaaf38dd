"""Experiment 6: learning-rate schedules on the small AlexNet (embedded MNIST).

    python experiments/schedules.py            # about 8 minutes on a 2-core CPU
    python experiments/schedules.py --quick

Constant, the paper's divide-by-10-when-the-test-error-stops-improving (plateau), step decay
and cosine, each from the same starting rate (0.02, momentum 0.9) for the same number of
epochs, several seeds; test error is measured every half epoch.
"""

from __future__ import annotations

import pathlib
import time

from common import curve, mean_std, parser, pyplot, small_alexnet_config, train_run, write_results

EPOCHS = 6.0
SCHEDULES = {
    "constant": {"schedule.name": "constant"},
    "plateau (/10, patience 1)": {"schedule.name": "plateau", "schedule.patience": 1},
    "step (/10 at epoch 4)": {"schedule.name": "step", "schedule.step_epochs": (4,)},
    "cosine": {"schedule.name": "cosine"},
}


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "schedules").parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(1 if args.quick else args.seeds)
    schedules = dict(list(SCHEDULES.items())[:2]) if args.quick else SCHEDULES
    results, curves = {}, {}
    for i, (name, overrides) in enumerate(schedules.items()):
        runs = []
        for seed in seeds:
            c = small_alexnet_config(
                args.quick,
                **overrides,
                seed=seed,
                num_epochs=EPOCHS,
                eval_every_epochs=0.5,
                **{"optimizer.learning_rate": 0.02},
            )
            runs.append(train_run(c, out / "runs" / f"{i}-{seed}"))
        curves[name] = runs
        results[name] = {
            "final_test_error": mean_std([r["error"] for r, _ in runs]),
            "best_test_error": mean_std([min(curve(rows, "test", "error")[1]) for _, rows in runs]),
            "final_learning_rate": curve(runs[0][1], "train", "learning_rate")[1][-1],
        }
        print(name, results[name], flush=True)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, runs in curves.items():
        s, e = curve(runs[0][1], "test", "error")
        axes[0].plot(s, e, "o-", ms=3, label=name)
        s, lr = curve(runs[0][1], "train", "learning_rate")
        axes[1].plot(s, lr, label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("test error (seed 0)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("learning rate")
    for ax in axes:
        ax.set_xlabel("step (batch 64)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "schedules.png", dpi=100)
    plt.close(fig)
    write_results(out, "schedules", {"schedules": results, "epochs": EPOCHS}, started)
    return results


if __name__ == "__main__":
    main()
