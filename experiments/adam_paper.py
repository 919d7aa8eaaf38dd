"""Experiment 3: the Adam paper's sections 6.1-6.3 in small, on the embedded MNIST subset.

    python experiments/adam_paper.py           # about 12 minutes on a 2-core CPU
    python experiments/adam_paper.py --quick

Multiclass logistic regression with L2 regularisation and a small CNN (the small AlexNet),
mini-batches of 128, comparing Adam, SGD with Nesterov momentum, AdaGrad and RMSProp. Each
optimizer runs at its best learning rate from a grid that this script searches (lowest final
training loss, one seed), then with several seeds at that rate; the plots are training-loss
curves like the paper's figures. (Kingma & Ba, 2015: Adam converges as fast as SGD with
Nesterov momentum and AdaGrad on logistic regression and faster than all on the CNN.)
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import curve, mean_std, parser, pyplot, small_alexnet_config, train_run, write_results
from gd_variants import Table

import gdjax
from gdjax import data

OPTIMIZERS = {
    "Adam": ("adam", {}, gdjax.adam),
    "SGD Nesterov": (
        "momentum",
        {"optimizer.hparams.nesterov": True},
        lambda lr: gdjax.momentum(lr, 0.9, nesterov=True),
    ),
    "AdaGrad": ("adagrad", {}, gdjax.adagrad),
    "RMSProp": ("rmsprop", {}, gdjax.rmsprop),
}
GRIDS = {  # logistic regression
    "Adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "SGD Nesterov": [1e-2, 3e-2, 1e-1, 3e-1, 1.0],
    "AdaGrad": [1e-2, 3e-2, 1e-1, 3e-1, 1.0],
    "RMSProp": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
}
CNN_GRIDS = {  # the CNN's stable rates are lower
    "Adam": [3e-4, 1e-3, 3e-3],
    "SGD Nesterov": [3e-3, 1e-2, 3e-2],
    "AdaGrad": [3e-3, 1e-2, 3e-2],
    "RMSProp": [1e-4, 3e-4, 1e-3],
}
L2 = 1e-4


def logistic_run(make_tx, lr, epochs, seed, train, batch=128):
    x = train.images.reshape(len(train), -1).astype(np.float32) / 255.0
    y = train.labels
    tx = make_tx(lr)
    params = {"w": jnp.zeros((784, 10)), "b": jnp.zeros(10)}
    state = tx.init(params)

    def loss_fn(p, xb, yb):
        ce = optax.softmax_cross_entropy_with_integer_labels(
            xb @ p["w"] + p["b"][None, :], yb
        ).mean()
        return ce + 0.5 * L2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    loader = data.make_loader(
        Table(x, y), batch_size=batch, seed=seed, num_epochs=epochs, read_threads=0
    )
    losses = [float(step(params, state, x[:batch], y[:batch])[2])]
    per_epoch = len(x) // batch
    epoch_losses = []
    for k, b in enumerate(loader, start=1):
        params, state, loss = step(params, state, b["x"], b["y"])
        epoch_losses.append(loss)
        if k % per_epoch == 0:
            losses.append(float(np.mean(jax.device_get(epoch_losses))))
            epoch_losses = []
    return losses


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "adam_paper").parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(1 if args.quick else args.seeds)
    train = data.load("mnist5k", "train")
    epochs = 2 if args.quick else 20
    grids = {k: v[:1] for k, v in GRIDS.items()} if args.quick else GRIDS

    results = {"logistic": {}, "cnn": {}}
    logistic_curves = {}
    for name, (_, _, make_tx) in OPTIMIZERS.items():
        search = {lr: logistic_run(make_tx, lr, epochs, 0, train)[-1] for lr in grids[name]}
        best = min(search, key=lambda lr: search[lr] if np.isfinite(search[lr]) else np.inf)
        runs = [logistic_run(make_tx, best, epochs, s, train) for s in seeds]
        logistic_curves[name] = (best, runs)
        results["logistic"][name] = {
            "grid": search,
            "best_learning_rate": best,
            "final_training_loss": mean_std([r[-1] for r in runs]),
        }
        print("logistic", name, best, results["logistic"][name]["final_training_loss"], flush=True)

    cnn_curves = {}
    cnn_epochs = 3.0
    cnn_optimizers = list(OPTIMIZERS.items())[:2] if args.quick else list(OPTIMIZERS.items())
    for i, (name, (opt_name, extra, _)) in enumerate(cnn_optimizers):
        overrides = {"optimizer.name": opt_name, "optimizer.hparams.momentum": None, **extra}
        if opt_name == "momentum":
            overrides["optimizer.hparams.momentum"] = 0.9
        # The search runs seed 0 with the full budget (a one-epoch search picked rates that
        # diverged later); the best rate's search run is that rate's seed-0 run.
        search, search_runs = {}, {}
        for j, lr in enumerate(CNN_GRIDS[name] if not args.quick else CNN_GRIDS[name][:1]):
            c = small_alexnet_config(
                args.quick,
                **overrides,
                num_epochs=cnn_epochs,
                batch_size=128,
                **{"optimizer.learning_rate": lr},
            )
            c.schedule.name = "constant"
            try:
                search_runs[lr] = train_run(c, out / "runs" / f"grid-{i}-{j}")
                search[lr] = float(np.mean(curve(search_runs[lr][1], "train", "loss")[1][-3:]))
            except FloatingPointError:
                search[lr] = float("inf")
        best = min(search, key=search.get)
        runs = [search_runs[best]]
        for seed in list(seeds)[1:]:
            c = small_alexnet_config(
                args.quick,
                **overrides,
                seed=seed,
                num_epochs=cnn_epochs,
                batch_size=128,
                **{"optimizer.learning_rate": best},
            )
            c.schedule.name = "constant"
            runs.append(train_run(c, out / "runs" / f"best-{i}-{seed}"))
        cnn_curves[name] = (best, runs)
        results["cnn"][name] = {
            "grid_final_train_loss": search,
            "best_learning_rate": best,
            "final_training_loss": mean_std(
                [float(curve(rows, "train", "loss")[1][-1]) for _, rows in runs]
            ),
            "test_error": mean_std([r["error"] for r, _ in runs]),
        }
        print("cnn", name, best, results["cnn"][name]["test_error"], flush=True)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, (best, runs) in logistic_curves.items():
        axes[0].plot(np.mean(runs, axis=0), label=f"{name} (lr {best:g})")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training cost (mean over seeds)")
    axes[0].set_title("logistic regression + L2, mnist5k, batch 128")
    for name, (best, runs) in cnn_curves.items():
        s, v = curve(runs[0][1], "train", "loss")
        axes[1].plot(s, v, label=f"{name} (lr {best:g})")
    axes[1].set_xlabel("iteration (batch 128)")
    axes[1].set_ylabel("training cost (seed 0)")
    axes[1].set_title("small AlexNet CNN, mnist5k")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "adam_paper.png", dpi=100)
    plt.close(fig)
    write_results(out, "adam_paper", results, started)
    return results


if __name__ == "__main__":
    main()
