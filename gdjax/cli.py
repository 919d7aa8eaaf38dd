"""The ``gdjax`` command: a thin entry point over :func:`gdjax.train.train_and_evaluate`.

    gdjax                                   # = gdjax train: small AlexNet on the embedded MNIST
    gdjax train --config=cifar10 --config.dataset=cifar10:/data/cifar-10-python.tar.gz
    gdjax train --config=paper --config.dataset=folder:/data/imagenet --workdir=runs/alexnet
    gdjax train --config.optimizer.name=adam --config.optimizer.learning_rate=1e-3
    gdjax eval --workdir=runs/default       # evaluate the latest checkpoint (ten crops if set)
    gdjax bench --help                      # gdjax vs PyTorch: training step, inference, optimizers

``--config`` takes a preset name (default, cifar10, paper) or the path of a Python file whose
``get_config()`` returns a ConfigDict; ``--config.FIELD=VALUE`` overrides one field (an
unknown field is an error). ``--workdir`` holds checkpoints and logs; running again with the
same workdir resumes. Multi-host: ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (or ``--distributed`` to let JAX read them from the cluster) start JAX's
multi-controller runtime first.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from gdjax.configs import PRESETS, preset_path

__all__ = ["entry_point", "main"]

COMMANDS = ("train", "eval", "bench")
FLAG_HELP = {
    "config": "A preset name (default, cifar10, paper) or a config file path.",
    "workdir": "Checkpoints and logs (default: runs/<preset>).",
    "distributed": "Call jax.distributed.initialize() first (cluster auto-detection).",
    "coordinator_address": "host:port of process 0 (multi-host).",
    "num_processes": "Number of processes (multi-host).",
    "process_id": "This process's index (multi-host).",
}


def _parse_flags(config_path: str, args: list[str], prog: str) -> flags.FlagValues:
    """Flags of one invocation, in a fresh FlagValues (no global state between calls)."""
    values = flags.FlagValues()
    argv = [prog, *args]
    config_flags.DEFINE_config_file(
        "config",
        config_path,
        FLAG_HELP["config"],
        flag_values=values,
        lock_config=True,
        sys_argv=argv,
    )
    flags.DEFINE_string("workdir", None, FLAG_HELP["workdir"], flag_values=values)
    flags.DEFINE_bool("distributed", False, FLAG_HELP["distributed"], flag_values=values)
    flags.DEFINE_string(
        "coordinator_address", None, FLAG_HELP["coordinator_address"], flag_values=values
    )
    flags.DEFINE_integer("num_processes", None, FLAG_HELP["num_processes"], flag_values=values)
    flags.DEFINE_integer("process_id", None, FLAG_HELP["process_id"], flag_values=values)
    values(argv)
    return values


def _resolve_presets(args: list[str]) -> tuple[str, list[str], str]:
    """Split off ``--config=NAME|PATH``: return the config file, the other args and a name."""
    rest, value = [], None
    i = 0
    while i < len(args):
        if args[i].startswith("--config="):
            value = args[i].split("=", 1)[1]
        elif args[i] == "--config" and i + 1 < len(args):
            value = args[i + 1]
            i += 1
        else:
            rest.append(args[i])
        i += 1
    if value is None or value in PRESETS:
        name = value or "default"
        return str(preset_path(name)), rest, name
    path = pathlib.Path(value.split(":")[0])
    if not path.is_file():
        raise ValueError(f"--config={value}: not a preset ({', '.join(PRESETS)}) nor a config file")
    return value, rest, path.stem


def _help() -> str:
    from gdjax.configs import get_config

    lines = [__doc__.strip(), "", "flags:"]
    for name, text in FLAG_HELP.items():
        lines.append(f"  --{name}: {text}")
    lines += ["", "config fields (default preset; override any with --config.FIELD=VALUE):", ""]
    lines += ["  " + line for line in str(get_config("default")).splitlines()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``gdjax [train|eval] [flags]``; returns the process exit status."""
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    command = "train"
    if args and not args[0].startswith("-"):
        command, args = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"gdjax: unknown command {command!r}; commands are {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    if command == "bench":
        from gdjax.bench import main as bench

        bench(args)
        return 0
    if "--help" in args or "-h" in args or "--helpfull" in args:
        print(_help())
        return 0
    try:
        config_path, args, preset = _resolve_presets(args)
        parsed = _parse_flags(config_path, args, f"gdjax {command}")
    except (flags.Error, ValueError) as e:
        print(f"gdjax {command}: {e}", file=sys.stderr)
        return 2
    except (KeyError, AttributeError) as e:  # an override naming no field of the config
        print(f"gdjax {command}: unknown config field {e}", file=sys.stderr)
        return 2
    if parsed.distributed or parsed.coordinator_address:
        from gdjax.train import initialize_distributed

        initialize_distributed(parsed.coordinator_address, parsed.num_processes, parsed.process_id)
    from gdjax.train import evaluate_checkpoint, train_and_evaluate

    workdir = parsed.workdir or f"runs/{preset}"
    config = parsed.config
    if command == "train":
        result = train_and_evaluate(config, workdir)
        print(
            f"done: {result['steps']} steps ({result['epochs']:.2f} epochs) in "
            f"{result['wall_seconds']:.0f} s; test accuracy {result['accuracy']:.4f}, "
            f"top-5 error {result['top5_error']:.4f}; logs and checkpoints in {workdir}"
        )
    else:
        saved = pathlib.Path(workdir) / "config.json"
        if saved.is_file() and config_path == str(preset_path("default")) and preset == "default":
            # No --config given: evaluate with the config the run trained with.
            import ml_collections

            config = ml_collections.ConfigDict(json.loads(saved.read_text()))
        result = evaluate_checkpoint(config, workdir)
        print(json.dumps(result, indent=2))
    return 0


def entry_point() -> None:  # pragma: no cover - the console script
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
