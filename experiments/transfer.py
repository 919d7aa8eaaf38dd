"""Experiment 5: transfer learning with frozen convolutional layers (optax masking).

    python experiments/transfer.py            # about 6 minutes on a 2-core CPU
    python experiments/transfer.py --quick

Train the small AlexNet on digits 0-4 of the embedded MNIST subset; then learn digits 5-9 with
its convolutional layers frozen (``optax.multi_transform`` sends them ``set_to_zero``) and a
new fully connected head, against the same network trained from scratch with the same budget
of steps, at several training-set sizes and seeds. Test accuracy is on the held-out 5-9s.
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
from gdjax.models import AlexNet
from gdjax.train import Parallel, TrainState, evaluate


def subset(source, digits, per_class=None, seed=0):
    """Examples of ``digits`` (relabelled 0..k-1), at most ``per_class`` of each."""
    rng = np.random.default_rng(seed)
    keep = []
    for new, d in enumerate(digits):
        idx = rng.permutation(np.flatnonzero(source.labels == d))[:per_class]
        keep.append((idx, new))
    idx = np.concatenate([i for i, _ in keep])
    labels = np.concatenate([np.full(len(i), new) for i, new in keep])
    return data.ArraySource(
        source.images[idx], labels, [str(d) for d in digits], f"{source.name}-{digits}"
    )


def train(model, params, tx, source, steps, seed, stats, batch=32):
    variables = {"params": params}
    state = TrainState.create(
        apply_fn=model.apply, variables=variables, tx=tx, rng=jax.random.key(seed)
    )
    par = Parallel("none")
    state = par.put_state(state)
    augment = data.SmallTrain(stats, pad=2, flip=False)
    batch = min(batch, len(source))
    loader = data.make_loader(
        source, batch_size=batch, transform=augment, seed=seed, num_epochs=None
    )
    it = iter(loader)
    for _ in range(steps):
        state, _ = par.train_step(state, par.put_batch(next(it)))
    return state, par


def head_labels(params):
    return {k: ("frozen" if k.startswith("conv") else "train") for k in params}


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "transfer").parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(1 if args.quick else args.seeds)
    full_train, full_test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    stats = data.compute_stats(full_train, max_examples=None)
    model = AlexNet(num_classes=5, variant="small", in_channels=1, dropout_rate=0.25)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 28, 28, 1)))["params"])

    # 1. Source task: digits 0-4.
    source_task = subset(full_train, range(5))
    pre_steps = 5 if args.quick else 400
    pre_state, _ = train(
        model, init(jax.random.key(100)), gdjax.momentum(0.01), source_task, pre_steps, 0, stats
    )
    pretrained = jax.device_get(pre_state.params)

    # 2. Target task: digits 5-9, transfer vs scratch, several sizes.
    target_test = subset(full_test, range(5, 10))
    sizes = [10] if args.quick else [5, 20, 80, 400]  # examples per class
    steps = 5 if args.quick else 150
    results = {
        "sizes_per_class": sizes,
        "steps": steps,
        "pretrain_steps": pre_steps,
        "transfer": {},
        "scratch": {},
    }
    for size in sizes:
        accs = {"transfer": [], "scratch": []}
        for seed in seeds:
            target = subset(full_train, range(5, 10), per_class=size, seed=seed)
            fresh = init(jax.random.key(seed))
            transferred = {**fresh, **{k: v for k, v in pretrained.items() if k.startswith("conv")}}
            frozen_tx = optax.multi_transform(
                {"train": gdjax.momentum(0.01), "frozen": optax.set_to_zero()}, head_labels(fresh)
            )
            for name, (params, tx) in {
                "transfer": (transferred, frozen_tx),
                "scratch": (fresh, gdjax.momentum(0.01)),
            }.items():
                state, par = train(model, params, tx, target, steps, seed, stats)
                if name == "transfer":  # the frozen layers really stayed put
                    for k in pretrained:
                        if k.startswith("conv"):
                            np.testing.assert_array_equal(
                                jax.device_get(state.params[k]["kernel"]), pretrained[k]["kernel"]
                            )
                metrics = evaluate(par, state, target_test, data.SmallEval(stats), 500)
                accs[name].append(metrics["accuracy"])
        for name in accs:
            results[name][str(size)] = mean_std(accs[name])
        print(size, {k: results[k][str(size)]["mean"] for k in accs}, flush=True)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in ("transfer", "scratch"):
        means = [results[name][str(s)]["mean"] for s in sizes]
        stds = [results[name][str(s)]["std"] for s in sizes]
        ax.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training examples per class (digits 5-9)")
    ax.set_ylabel(f"test accuracy after {steps} steps")
    ax.set_title("frozen conv layers from digits 0-4 vs from scratch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=100)
    plt.close(fig)
    write_results(out, "transfer", results, started)
    return results


if __name__ == "__main__":
    main()
