"""Experiment 7: large batches, where momentum SGD stops and LARS / LAMB carry on.

    python experiments/large_batch.py            # about 40 minutes on a 2-core CPU
    python experiments/large_batch.py --quick

The small AlexNet on the embedded MNIST subset (4,000 training digits) at global batch 32,
128, 512, 1,000 and 4,000 (full batch), the same number of epochs for every batch (so the
large batches take far fewer steps), three seeds each, with the large-batch recipe: the
learning rate is given for batch 64 and scaled to the run's batch (linearly for momentum SGD
and LARS, Goyal et al. 2017 / You et al. 2017; by the square root for LAMB, You et al. 2020),
with a linear warm-up, then cosine decay. Reports the test error against the batch size and
the training curves. The papers' finding, for AlexNet(-BN) on ImageNet: momentum SGD with the
linear rule loses accuracy beyond about 1K-4K, LARS holds to 8K (You, Gitman & Ginsburg 2017).
"""

from __future__ import annotations

import pathlib
import time

from common import (
    curve,
    mean_std,
    parser,
    positive_float,
    pyplot,
    small_alexnet_config,
    train_run,
    write_results,
)

TRAIN_EXAMPLES = 4000
BATCHES = (32, 128, 512, 1000, 4000)
EPOCHS = 4.0
WARMUP_EPOCHS = 1.0
REFERENCE_BATCH = 64

# method -> config overrides; learning rates are for the reference batch of 64. LARS's was the
# best of 0.01, 0.03, 0.1, 1 and 3 at batch 512 over 5 epochs (test error 81, 44, 34, 59, 90%);
# LAMB's and momentum SGD's are the usual ones (LAMB 3e-3 gave 12% there, SGD 29%).
METHODS = {
    "momentum SGD": {
        "optimizer.name": "momentum",
        "optimizer.learning_rate": 0.01,
        "optimizer.lr_scaling": "linear",
        "optimizer.hparams.weight_decay": 5e-4,
    },
    "LARS": {
        "optimizer.name": "lars",
        "optimizer.learning_rate": 0.1,
        "optimizer.lr_scaling": "linear",
        "optimizer.hparams.weight_decay": 5e-4,
    },
    "LAMB": {
        "optimizer.name": "lamb",
        "optimizer.learning_rate": 3e-3,
        "optimizer.lr_scaling": "sqrt",
        "optimizer.hparams.weight_decay": 0.01,
    },
}


def config_for(method: str, batch: int, epochs: float, seed: int, quick: bool):
    steps_per_epoch = TRAIN_EXAMPLES // batch
    c = small_alexnet_config(
        False,
        **METHODS[method],
        **{
            "optimizer.reference_batch_size": REFERENCE_BATCH,
            "schedule.name": "cosine",
            "schedule.warmup_epochs": 0.0 if quick else WARMUP_EPOCHS,
        },
        batch_size=batch,
        num_epochs=epochs,
        seed=seed,
        eval_batch_size=1000,
        eval_every_epochs=epochs,
        log_every_steps=max(1, steps_per_epoch // 4),
    )
    return c


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "large_batch")
    p.add_argument(
        "--epochs", type=positive_float, default=EPOCHS, help="epochs for every batch size"
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = (32, 128) if args.quick else BATCHES
    epochs = 0.1 if args.quick else args.epochs
    seeds = range(1 if args.quick else args.seeds)

    results: dict = {m: {} for m in METHODS}
    curves: dict = {m: {} for m in METHODS}
    for method in METHODS:
        for batch in batches:
            runs = []
            for seed in seeds:
                c = config_for(method, batch, epochs, seed, args.quick)
                workdir = out / "runs" / f"{method.split()[0]}-{batch}-{seed}"
                result, rows = train_run(c, workdir)
                runs.append((result, rows))
            curves[method][batch] = runs[0][1]
            errors = [r["error"] for r, _ in runs]
            results[method][batch] = {
                "test_error": mean_std(errors),
                "final_train_loss": mean_std(
                    [curve(rows, "train", "loss")[1][-1] for _, rows in runs]
                ),
                "steps": int(epochs * TRAIN_EXAMPLES // batch),
                "peak_learning_rate": _peak(c),
                "seconds": mean_std([r["wall_seconds"] for r, _ in runs]),
            }
            print(method, batch, results[method][batch]["test_error"], flush=True)

    summary = {m: _holds_to(results[m]) for m in METHODS}
    _plot(out, results, curves, batches, epochs, len(seeds))
    write_results(
        out,
        "large_batch",
        {
            "results": results,
            "largest_batch_within_1pt_of_batch_32": summary,
            "epochs": epochs,
            "warmup_epochs": 0.0 if args.quick else WARMUP_EPOCHS,
            "reference_batch": REFERENCE_BATCH,
        },
        started,
    )
    return results


def _peak(c) -> float:
    from gdjax.train.recipe import scaled_learning_rate

    return scaled_learning_rate(c)


def _holds_to(per_batch: dict) -> int | None:
    """The largest batch whose mean test error is within 1 point of the smallest batch's."""
    batches = sorted(per_batch)
    base = per_batch[batches[0]]["test_error"]["mean"]
    ok = [b for b in batches if per_batch[b]["test_error"]["mean"] <= base + 0.01]
    return max(ok) if ok else None


def _plot(out, results, curves, batches, epochs, n_seeds):
    plt = pyplot()
    fig, axes = plt.subplots(1, 1 + len(METHODS), figsize=(5 * (1 + len(METHODS)), 4.2))
    for method, per_batch in results.items():
        means = [per_batch[b]["test_error"]["mean"] for b in batches]
        stds = [per_batch[b]["test_error"]["std"] for b in batches]
        axes[0].errorbar(batches, means, yerr=stds, marker="o", capsize=3, label=method)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("global batch size")
    axes[0].set_ylabel(f"test error after {epochs:g} epochs ({n_seeds} seeds)")
    axes[0].legend()
    axes[0].grid(alpha=0.3, which="both")
    for ax, (method, per_batch) in zip(axes[1:], curves.items(), strict=True):
        for batch, rows in per_batch.items():
            s, loss = curve(rows, "train", "loss")
            ax.plot(s * batch / TRAIN_EXAMPLES, loss, label=f"batch {batch}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (logged batches)")
        ax.set_title(method)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "large_batch.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
