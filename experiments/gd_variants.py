"""Experiment 1: batch vs stochastic vs mini-batch gradient descent.

    python experiments/gd_variants.py                 # about a minute on a 2-core CPU
    python experiments/gd_variants.py --quick

Linear regression (the textbook setting) against the closed-form least-squares solution: loss
against epochs and against wall time, distance to the optimum, the noise of SGD, and the
effect of batch size and learning rate. Then the same three on softmax (logistic) regression
of the embedded 8×8 digits. All three variants are `gdjax.sgd`; only the batches fed by
`gdjax.data.make_loader` differ ("full", 1, 32).
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import mean_std, parser, pyplot, write_results

import gdjax
from gdjax import data


class Table:
    """A random-access source over rows of arrays (x, y)."""

    name = "table"

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def steps_in_epoch(batch, n: int) -> int:
    """Steps in one epoch of ``n`` examples."""
    return 1 if batch == "full" else n // int(batch)


def regression_problem(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    scales = np.linspace(1.0, 3.0, d)  # mildly ill-conditioned features
    x = (rng.standard_normal((n, d)) * scales).astype(np.float32)
    w_true = rng.standard_normal(d).astype(np.float32)
    y = (x @ w_true + 0.5 * rng.standard_normal(n)).astype(np.float32)
    w_ls, *_ = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)
    return x, y, w_ls


def mse(w, x, y):
    return 0.5 * jnp.mean((x @ w - y) ** 2)


def run_regression(x, y, w_ls, batch, lr, epochs, seed):
    """Per-epoch full-data loss, distance to w_ls and wall time; per-step loss of the batch."""
    tx = gdjax.sgd(lr)
    w = jnp.zeros(x.shape[1])
    state = tx.init(w)

    @jax.jit
    def step(w, state, xb, yb):
        loss, g = jax.value_and_grad(mse)(w, xb, yb)
        u, state = tx.update(g, state, w)
        return optax.apply_updates(w, u), state, loss

    step(w, state, x[:1], y[:1])  # compile outside the timing
    if batch != "full" and batch != len(x):
        step(w, state, x[: int(batch)], y[: int(batch)])
    loader = data.make_loader(
        Table(x, y), batch_size=batch, seed=seed, num_epochs=epochs, read_threads=0
    )
    per_epoch = steps_in_epoch(batch, len(x))
    history = {
        "loss": [float(mse(w, x, y))],
        "distance": [float(np.linalg.norm(w - w_ls))],
        "time": [0.0],
    }
    step_losses = []
    t0 = time.perf_counter()
    for k, b in enumerate(loader, start=1):
        w, state, loss = step(w, state, b["x"], b["y"])
        step_losses.append(loss)
        if k % per_epoch == 0:
            jax.block_until_ready(w)
            history["time"].append(time.perf_counter() - t0)
            history["loss"].append(float(mse(w, x, y)))
            history["distance"].append(float(np.linalg.norm(np.asarray(w) - w_ls)))
    history["step_losses"] = np.asarray(jax.device_get(step_losses)).tolist()
    return history


def softmax_regression(train, test, batch, lr, epochs, seed):
    xtr = train.images.reshape(len(train), -1).astype(np.float32) / 255.0
    xte = test.images.reshape(len(test), -1).astype(np.float32) / 255.0
    tx = gdjax.sgd(lr)
    params = {"w": jnp.zeros((xtr.shape[1], 10)), "b": jnp.zeros(10)}
    state = tx.init(params)

    def loss_fn(p, xb, yb):
        logits = xb @ p["w"] + p["b"][None, :]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def step(p, state, xb, yb):
        g = jax.grad(loss_fn)(p, xb, yb)
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state

    loader = data.make_loader(
        Table(xtr, train.labels), batch_size=batch, seed=seed, num_epochs=epochs, read_threads=0
    )
    per_epoch = steps_in_epoch(batch, len(xtr))
    losses = [float(loss_fn(params, xtr, train.labels))]
    for k, b in enumerate(loader, start=1):
        params, state = step(params, state, b["x"], b["y"])
        if k % per_epoch == 0:
            losses.append(float(loss_fn(params, xtr, train.labels)))
    accuracy = float(
        np.mean(np.argmax(xte @ params["w"] + params["b"][None, :], -1) == test.labels)
    )
    return losses, accuracy


VARIANTS = {"batch GD": ("full", 0.2), "mini-batch GD (32)": (32, 0.05), "SGD (1)": (1, 0.005)}


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "gd_variants").parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, d, epochs = (200, 5, 3) if args.quick else (1000, 10, 30)
    seeds = range(1 if args.quick else args.seeds)
    x, y, w_ls = regression_problem(n, d)
    optimum = float(mse(jnp.asarray(w_ls, jnp.float32), x, y))
    runs = {
        name: [run_regression(x, y, w_ls, b, lr, epochs, s) for s in seeds]
        for name, (b, lr) in VARIANTS.items()
    }

    # Batch GD run long enough converges to the closed form (the sanity check of the setup).
    long = run_regression(x, y, w_ls, "full", 0.2, 20 if args.quick else 400, 0)

    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    for name, hs in runs.items():
        h = hs[0]
        axes[0].plot(np.asarray(h["loss"]) - optimum, label=name)
        axes[1].plot(h["time"], np.asarray(h["loss"]) - optimum, label=name)
        axes[2].plot(h["distance"], label=name)
    for ax, xl in zip(axes[:3], ("epoch", "wall time (s)", "epoch"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("loss - optimal loss")
    axes[1].set_ylabel("loss - optimal loss")
    axes[2].set_ylabel("||w - w_ls||")
    sgd_steps = np.asarray(runs["SGD (1)"][0]["step_losses"])
    mb_steps = np.asarray(runs["mini-batch GD (32)"][0]["step_losses"])
    axes[3].plot(sgd_steps[-n:], lw=0.5, label="SGD (1): loss of its one example")
    axes[3].plot(
        np.arange(0, n, 32)[: len(mb_steps[-(n // 32) :])],
        mb_steps[-(n // 32) :],
        label="mini-batch (32)",
    )
    axes[3].set_yscale("log")
    axes[3].set_xlabel("examples seen in the last epoch")
    axes[3].set_title("the noise of stochastic gradients")
    axes[3].legend()
    fig.tight_layout()
    fig.savefig(out / "regression.png", dpi=90)
    plt.close(fig)

    # Batch size x learning rate: final distance to the optimum after a fixed budget of epochs.
    batches = [1, 8, 32, 128, "full"] if not args.quick else [8, "full"]
    lrs = [0.003, 0.01, 0.03, 0.1, 0.3] if not args.quick else [0.01, 0.1]
    grid = np.full((len(batches), len(lrs)), np.nan)
    for i, b in enumerate(batches):
        for j, lr in enumerate(lrs):
            dist = run_regression(x, y, w_ls, b, lr, max(1, epochs // 3), 0)["distance"][-1]
            grid[i, j] = dist if np.isfinite(dist) and dist < 1e6 else np.nan
    fig, ax = plt.subplots(figsize=(6, 4))
    im = ax.imshow(np.log10(grid), cmap="viridis_r")
    ax.set_xticks(range(len(lrs)), [str(v) for v in lrs])
    ax.set_yticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("batch size")
    ax.set_title(f"log10 ||w - w_ls|| after {max(1, epochs // 3)} epochs (blank: diverged)")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out / "batch_lr.png", dpi=90)
    plt.close(fig)

    # Softmax regression on the embedded digits.
    train, test = data.load("digits", "train"), data.load("digits", "test")
    logistic = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (b, lr) in {
        "batch GD": ("full", 0.5),
        "mini-batch GD (32)": (32, 0.1),
        "SGD (1)": (1, 0.01),
    }.items():
        accs, curves = [], []
        for s in seeds:
            losses, acc = softmax_regression(train, test, b, lr, epochs, s)
            accs.append(acc)
            curves.append(losses)
        logistic[name] = {
            "test_accuracy": mean_std(accs),
            "final_train_loss": mean_std([c[-1] for c in curves]),
        }
        ax.plot(curves[0], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training cross-entropy")
    ax.set_title("softmax regression on digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "logistic.png", dpi=90)
    plt.close(fig)

    results = {
        "closed_form_vs_batch_gd": {
            "distance": long["distance"][-1],
            "loss_gap": long["loss"][-1] - optimum,
        },
        "regression": {
            name: {
                "final_loss_gap": mean_std([h["loss"][-1] - optimum for h in hs]),
                "final_distance": mean_std([h["distance"][-1] for h in hs]),
                "wall_seconds": mean_std([h["time"][-1] for h in hs]),
                "last_epoch_batch_loss_std": mean_std(
                    [
                        float(np.std(h["step_losses"][-steps_in_epoch(VARIANTS[name][0], n) :]))
                        for h in hs
                    ]
                ),
            }
            for name, hs in runs.items()
        },
        "batch_lr_grid": {
            "batch_sizes": [str(b) for b in batches],
            "learning_rates": lrs,
            "distance": grid,
        },
        "logistic_digits": logistic,
        "settings": {
            "n": n,
            "d": d,
            "epochs": epochs,
            "variants": {k: list(map(str, v)) for k, v in VARIANTS.items()},
        },
    }
    write_results(out, "gd_variants", results, started)
    return results


if __name__ == "__main__":
    main()
