"""The gdjax command: a thin entry point over gdjax.train.train_and_evaluate.

usage:
  gdjax [train] [--config=PRESET|FILE] [--config.FIELD=VALUE ...] [--workdir=DIR] [--restart]
  gdjax eval --workdir=DIR [--step=N] [--config.FIELD=VALUE ...]
  gdjax --version                         # or: gdjax version
  gdjax help [train|eval]                 # or: gdjax [COMMAND] --help

examples:
  gdjax                                   # = gdjax train: small AlexNet on the embedded MNIST
  gdjax train --config=cifar10 --config.dataset=cifar10:/data/cifar-10-python.tar.gz
  gdjax train --config=paper --config.dataset=folder:/data/imagenet --workdir=runs/alexnet
  gdjax train --config.optimizer.name=adam --config.optimizer.learning_rate=1e-3
  gdjax eval --workdir=runs/default       # the latest checkpoint (ten crops if AlexNet input)
  gdjax eval --workdir=runs/default --step=500   # one of the checkpoints the workdir keeps

--config takes a preset name (default, cifar10, paper) or the path of a Python file whose
get_config() returns a ConfigDict; --config.FIELD=VALUE overrides one field (an unknown field
is an error; VALUE None unsets an optimizer hyperparameter). --workdir holds checkpoints and
logs; running again with the same workdir resumes. Errors print one line (exit status 2 for
usage and config errors); --verbose shows the traceback.

Before numpy or jax load, the command makes glibc's malloc keep freed memory for reuse
(gdjax.host_memory: XLA's per-step buffers are then not faulted in afresh each step);
GDJAX_RETAIN_HOST_MEMORY=0 leaves malloc alone.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import pathlib
import signal
import sys
import time
import traceback
import warnings

from gdjax._extras import MissingExtraError

__all__ = ["ConfigFileError", "UsageError", "entry_point", "main"]

COMMANDS = ("train", "eval")
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells use
# After a Ctrl-C, how long the exit's clean-up (grain's shared batches, exit functions) may take
# before the process leaves without it: a stopped run must never hang in its exit.
EXIT_GRACE_SECONDS = 20.0
HOST_MEMORY_VARIABLE = "GDJAX_RETAIN_HOST_MEMORY"
XLA_CACHE_VARIABLE = "GDJAX_XLA_CACHE"
# JAX's own: the shortest compile time of a program its persistent cache keeps (default 1 s).
MIN_COMPILE_TIME_VARIABLE = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
FLAG_HELP = {
    "train": {
        "config": "A preset name (default, cifar10, paper) or a config file path.",
        "workdir": "Checkpoints and logs (default: runs/<preset>); rerunning resumes.",
        "restart": "Move the workdir's checkpoints aside and start from step 0.",
        "distributed": "Call jax.distributed.initialize() first (cluster auto-detection).",
        "coordinator_address": "host:port of process 0 (multi-host).",
        "num_processes": "Number of processes (multi-host).",
        "process_id": "This process's index (multi-host). GDJAX_COORDINATOR, "
        "GDJAX_NUM_PROCESSES and GDJAX_PROCESS_ID, set, stand for these three flags.",
        "verbose": "Show the whole traceback of an error.",
    },
    "eval": {
        "workdir": "The run to evaluate: its newest readable checkpoint and its config.json.",
        "step": "Evaluate the checkpoint of this step (one the workdir keeps) instead.",
        "config": "A preset or config file instead of the workdir's config.json.",
        "verbose": "Show the whole traceback of an error.",
    },
}
BOOLEAN_FLAGS = ("restart", "distributed", "verbose")


class UsageError(ValueError):
    """A command line gdjax cannot run."""


def _split_args(command: str, args: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Split ``args`` into the command's own flags and the ``--config.FIELD=VALUE`` overrides."""
    known = FLAG_HELP[command]
    flags: dict[str, str | bool] = {}
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config."):
            if "=" not in arg:
                raise UsageError(f"{arg}: give a value, {arg}=VALUE")
            overrides.append(arg)
        elif arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            if name not in known:
                raise UsageError(
                    f"unknown flag --{name} for 'gdjax {command}'; flags are "
                    + ", ".join(f"--{k}" for k in known)
                    + ", --config.FIELD=VALUE"
                )
            if name in BOOLEAN_FLAGS:
                if eq and value.lower() not in ("true", "false", "1", "0"):
                    raise UsageError(f"--{name} takes no value (or true/false), got {value!r}")
                flags[name] = not eq or value.lower() in ("true", "1")
            else:
                if not eq:
                    if i + 1 >= len(args) or args[i + 1].startswith("--"):
                        raise UsageError(f"--{name} needs a value")
                    i += 1
                    value = args[i]
                if not value.strip():  # `--workdir=$RUN` with RUN unset: not runs/<preset>
                    raise UsageError(
                        f"--{name} is empty (an unset shell variable?): give it a value, or "
                        "leave the flag out for its default"
                    )
                flags[name] = value
        else:
            raise UsageError(f"unexpected argument {arg!r} (flags start with --)")
        i += 1
    return flags, overrides


class ConfigFileError(UsageError):
    """A config file that failed to load or whose ``get_config()`` raised."""


@contextlib.contextmanager
def _config_file_errors(value: object, path: pathlib.Path, doing: str):
    """Raise what the user's config file raised as a :class:`ConfigFileError` naming the flag,
    the step and the file's line."""
    try:
        yield
    except Exception as e:
        mine = path.resolve()
        frames = [
            f
            for f in traceback.extract_tb(e.__traceback__)
            if pathlib.Path(f.filename).resolve() == mine
        ]
        where = f" ({path.name}, line {frames[-1].lineno})" if frames else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigFileError(
            f"--config={value}: {doing} raised {type(e).__name__}"
            f"{': ' + first if first else ''}{where}"
        ) from e


def _base_config(flags: dict[str, str | bool]) -> tuple[object, str]:
    """The config named by ``--config`` (a preset or a file) and a name for the workdir."""
    from gdjax._checks import closest
    from gdjax.configs import PRESETS, get_config

    value = flags.get("config")
    if value is None or value in PRESETS:
        name = value or "default"
        return get_config(name), name
    path = pathlib.Path(str(value))
    if not path.is_file():
        near = closest(str(value), PRESETS) if "/" not in str(value) else None
        hint = f" (did you mean --config={near}?)" if near else ""
        raise UsageError(f"--config={value}: not a preset ({', '.join(PRESETS)}) nor a file{hint}")
    import importlib.machinery
    import importlib.util

    # Read as Python whatever the name ends in (ml_collections' config flags do the same):
    # spec_from_file_location gives no loader for a name without ".py" ("my_config", "c.txt").
    name = f"gdjax_user_config_{path.stem}"
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    with _config_file_errors(value, path, "loading it"):
        loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UsageError(f"--config={value}: the file defines no get_config()")
    with _config_file_errors(value, path, "get_config()"):
        config = module.get_config()
    import ml_collections

    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(
            f"--config={value}: get_config() returned {type(config).__name__} {config!r:.60}, "
            "not an ml_collections.ConfigDict (start from gdjax.configs.get_config('default'))"
        )
    return config, path.stem


def _parse_value(field: str, text: str, current: object) -> object:
    """The override's text as the field's type (that of its current value)."""
    from gdjax.configs.base import nullable_fields

    # "none" is a value of some string fields (parallel=none); elsewhere it unsets the field.
    if text.lower() == "none" and not (isinstance(current, str) and field not in nullable_fields()):
        if field not in nullable_fields() and current is not None:
            raise UsageError(f"config.{field} cannot be None")
        return None
    kind = type(current)
    if current is None:  # an unset placeholder: its declared type
        kind = nullable_fields().get(field, str)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            try:
                return int(text)
            except ValueError:  # 1e5 or 100.0: a whole number written as a float
                number = float(text)
                if not number.is_integer():
                    raise
                return int(number)
        if kind is float:
            return float(text)
        if kind in (tuple, list):
            import ast

            value = ast.literal_eval(text)
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)
        return text
    except (ValueError, SyntaxError):
        hint = f"like {current!r}" if current is not None else "or none (unset)"
        if kind is bool:
            hint = f"true or false{' or none (unset)' if field in nullable_fields() else ''}"
        if field == "batch_size" and text.strip().lower() == "full":  # make_loader's word
            hint += "; for batch GD, give the number of training examples"
        raise UsageError(f"--config.{field}={text}: expected {kind.__name__}, {hint}") from None


def _apply_overrides(config: object, overrides: list[str]) -> None:
    from gdjax.configs import get_field, override

    for arg in overrides:
        field, _, text = arg[len("--config.") :].partition("=")
        try:
            current = get_field(config, field)
        except (KeyError, AttributeError, TypeError):
            raise UsageError(f"unknown config field {field!r}{_field_hint(field)}") from None
        if hasattr(current, "items"):  # a section: ml_collections' own words were a type error
            raise UsageError(_section_hint(field, text, current)) from None
        try:
            override(config, **{field: _parse_value(field, text, current)})
        except TypeError as e:
            raise UsageError(f"--config.{field}={text}: {e}") from None


def _section_hint(field: str, text: str, section: object) -> str:
    """The error for a value given to a section of the config rather than to one of its fields."""
    from gdjax.configs.base import SECTION_CHOICES

    start = f"config.{field} is a section, not a value"
    choice = SECTION_CHOICES.get(field)
    if choice:
        return f"{start}: did you mean --config.{field}.{choice}={text}?"
    fields = ", ".join(section.keys())  # type: ignore[attr-defined]
    return f"{start}: set one of its fields ({fields})"


# Other libraries' names of config fields, for the hint of an unknown field.
_FIELD_ALIASES = {
    "lr": "learning_rate",
    "beta1": "b1",
    "beta2": "b2",
    "epsilon": "eps",
    "wd": "weight_decay",
    "epochs": "num_epochs",
    "steps": "num_steps",
    "name": "variant",
    "arch": "variant",
    "type": "name",
    "dropout": "dropout_rate",
}


def _starts_a_word(part: str, name: str) -> bool:
    """``part`` (3 letters or more) begins ``name`` or one of its ``_``-separated words:
    ``drop`` in ``dropout_rate``, ``rate`` in ``learning_rate``, but not ``eps`` in
    ``eval_every_steps``."""
    return len(part) >= 3 and (name.startswith(part) or f"_{part}" in name)


def _field_hint(field: str) -> str:
    """' (did you mean ...?)' for an unknown field: the fields that end like it, go by another
    library's name for it (``lr``) or are spelled close, looked for in its own section
    (``optimizer.hparams.``), the enclosing ones, then everywhere; else its section's fields."""
    import difflib

    from gdjax.configs.base import FIELDS

    paths = [path for path, _, _ in FIELDS]
    parts = field.split(".")[:-1]
    sections = {}  # its own section first, then the enclosing ones: name -> fields
    for name in (".".join(parts[:n]) for n in range(len(parts), 0, -1)):
        fields = [p for p in paths if p.startswith(name + ".")]
        if fields:
            sections[name] = fields
    last = field.rsplit(".", 1)[-1]

    def near(among: list[str]) -> list[str]:
        leaves = {p: p.rsplit(".", 1)[-1] for p in among}
        for alike in (
            lambda leaf: leaf == last,
            lambda leaf: leaf == _FIELD_ALIASES.get(last),
            lambda leaf: _starts_a_word(last, leaf) or _starts_a_word(leaf, last),
        ):
            found = [p for p, leaf in leaves.items() if alike(leaf)]
            if found:
                return found[:3]
        close = difflib.get_close_matches(last, set(leaves.values()), n=3, cutoff=0.75)
        return [p for p, leaf in leaves.items() if leaf in close][:3]

    for among in [*sections.values(), paths]:
        hint = near(among)
        if hint:
            return f" (did you mean {' or '.join(hint)}?)"
    if sections:  # none is near: its own section's fields
        name, fields = next(iter(sections.items()))
        return f" ({name}'s fields: {', '.join(p[len(name) + 1 :] for p in fields)})"
    return "; gdjax --help lists them"


def _versions() -> str:
    """gdjax's version and its core's, read from the installed metadata (jax is not imported)."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    from gdjax import __version__

    core = ", ".join(f"{n} {version(n)}" for n in ("jax", "jaxlib", "flax", "optax"))
    return f"gdjax {__version__} ({core}; Python {sys.version.split()[0]})"


def _saved_config(workdir: pathlib.Path) -> object:
    """The run's config.json laid over the default preset (so every field keeps its type)."""
    from gdjax.configs import get_config

    config = get_config("default")
    path = workdir / "config.json"
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise UsageError(f"{path} is not JSON ({e}); pass --config=PRESET|FILE instead") from None
    if not isinstance(saved, dict):
        raise UsageError(
            f"{path} holds a JSON {type(saved).__name__}, not a config object; pass "
            "--config=PRESET|FILE instead"
        )

    def lay(node, values, path=""):
        for key, value in values.items():
            if key not in node:
                # A field of an older gdjax, which nothing reads now, is left out (check_config
                # refuses fields the run would not read); an optimizer's hyperparameter is kept
                # for the optimizer's own check.
                if path == "optimizer.hparams.":
                    node[key] = value
            elif isinstance(value, dict):
                lay(node[key], value, f"{path}{key}.")
            else:
                node[key] = tuple(value) if isinstance(value, list) else value

    lay(config, saved)
    return config


def _help(command: str) -> str:
    from gdjax.configs import get_config, get_field
    from gdjax.configs.base import FIELDS

    lines = [__doc__.strip(), "", f"flags of 'gdjax {command}':"]
    for name, text in FLAG_HELP[command].items():
        lines.append(f"  --{name:<22}{text}")
    defaults = get_config("default")
    lines += ["", "config fields (--config.FIELD=VALUE; the default preset's values):"]
    for path, _, text in FIELDS:
        lines.append(f"  {path}={get_field(defaults, path)}")
        lines.append(f"      {text}")
    return "\n".join(lines)


def _start_jax() -> None:
    """Start JAX's backend, saying in one line when ``JAX_PLATFORMS`` names a platform it cannot
    start (jax 0.10 without its CUDA plugin raised a bare ``AssertionError`` for "cuda")."""
    import jax

    try:
        jax.devices()
    except (RuntimeError, AssertionError) as e:
        platforms = os.environ.get("JAX_PLATFORMS", "").strip()
        if not platforms:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else "no such backend here"
        first = first.split(" (set JAX_PLATFORMS=")[0].rstrip(". ")  # JAX's hint, said below
        raise UsageError(
            f"JAX_PLATFORMS={platforms!r}: JAX cannot start it ({first}); unset JAX_PLATFORMS "
            "to let JAX choose, or install that platform's jax (NVIDIA GPUs: pip install -U "
            "'jax[cuda13]', or 'jax[cuda12]'; TPUs: 'jax[tpu]')"
        ) from e


def _run(command: str, args: list[str], start: float) -> int:
    flags, overrides = _split_args(command, args)
    workdir = flags.get("workdir")
    if command == "eval":
        if not workdir:
            raise UsageError("gdjax eval needs --workdir (the run to evaluate)")
        run_dir = pathlib.Path(str(workdir))
        if not run_dir.is_dir():
            what = "a file, not a folder" if run_dir.exists() else "no such folder"
            raise FileNotFoundError(
                f"--workdir {run_dir}: {what} (the workdir of a gdjax train run)"
            )
        if not (run_dir / "checkpoints").is_dir():
            hint = ""
            if any(e.name.isdigit() and e.is_dir() for e in os.scandir(run_dir)):  # steps
                hint = f"; {run_dir} holds checkpoints itself: pass --workdir={run_dir.parent}"
            raise FileNotFoundError(f"no checkpoints in {run_dir / 'checkpoints'}{hint}")
        if "config" not in flags and (run_dir / "config.json").is_file():
            config = _saved_config(run_dir)
        else:
            config, _ = _base_config(flags)
        _apply_overrides(config, overrides)
        step = _integer_flag(flags, "step", "a checkpoint's step, an integer >= 0", minimum=0)
        from gdjax.train import evaluate_checkpoint

        _start_jax()
        print(json.dumps(evaluate_checkpoint(config, str(run_dir), step), indent=2))
        return 0

    config, preset = _base_config(flags)
    _apply_overrides(config, overrides)
    from gdjax.train import check_config

    check_config(config)  # before any process group, dataset or model
    multi_host = ("distributed", "coordinator_address", "num_processes", "process_id")
    # The variables initialize_distributed reads ask for it as the flags do: a job script that
    # sets them and runs `gdjax train` on every host trained one run per host, each alone.
    variables = ("GDJAX_COORDINATOR", "GDJAX_NUM_PROCESSES", "GDJAX_PROCESS_ID")
    if any(flags.get(name) not in (None, False) for name in multi_host) or any(
        os.environ.get(name, "").strip() for name in variables
    ):
        from gdjax.train import initialize_distributed

        if config.parallel == "pmap":
            _no_persistent_cache()
        initialize_distributed(
            flags.get("coordinator_address"),
            _integer_flag(flags, "num_processes"),
            _integer_flag(flags, "process_id"),
        )
    from gdjax.train import train_and_evaluate

    _start_jax()
    workdir = str(workdir or f"runs/{preset}")
    result = train_and_evaluate(config, workdir, restart=bool(flags.get("restart")))
    if not result["steps_this_run"]:
        speed = "nothing left to train (the checkpoint had every step)"
    elif result["train_images_per_second"] > 0:
        speed = f"{result['train_images_per_second']:.0f} img/s in training"
    else:  # the first step compiles, and steps before an evaluation or a save are not timed
        speed = "too few steps to time the training"
    # With 5 classes or fewer every label is in the top 5: its error, always 0, is left out.
    top5 = f", top-5 error {result['top5_error']:.4f}" if result["num_classes"] > 5 else ""
    print(
        f"done: {result['steps']} step{'s' * (result['steps'] != 1)} "
        f"({result['epochs']:.2f} epochs), {speed}; {config.eval_split} accuracy "
        f"{result['accuracy']:.4f}{top5}; "
        f"{time.perf_counter() - start:.0f} s in all; logs and checkpoints in {workdir}"
    )
    skipped = result["skipped_nonfinite_steps"]
    if skipped:  # optimizer.skip_nonfinite: say how many
        print(
            f"warning: {skipped} of the {result['steps']} steps "
            f"{'was' if skipped == 1 else 'were'} skipped for non-finite updates "
            "(optimizer.skip_nonfinite); a lower learning rate may train where these did not",
            file=sys.stderr,
        )
    return 0


def _integer_flag(
    flags: dict[str, str | bool],
    name: str,
    expected: str = "an integer",
    minimum: int | None = None,
) -> int | None:
    """Flag ``--name`` as an int (``None`` when not given); a usage error naming the flag, the
    value and ``expected`` when it is not an integer or is under ``minimum``."""
    if flags.get(name) is None:
        return None
    try:
        value = int(str(flags[name]))
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        raise UsageError(f"--{name} must be {expected}, got {flags[name]!r}")
    return value


def _complete(e: Exception) -> bool:
    """Errors whose message says what happened and what is left, so no type or hint is added:
    a missing extra, a checkpoint that could not be written or read, a workdir another run
    holds, a run that diverged (the last four only ever raised once the trainer is imported,
    so they are looked up there rather than imported here)."""
    checkpoint = sys.modules.get("gdjax.train.checkpoint")
    written = checkpoint is not None and isinstance(
        e, (checkpoint.CheckpointWriteError, checkpoint.CheckpointUnreadableError)
    )
    loop = sys.modules.get("gdjax.train.loop")
    busy = loop is not None and isinstance(e, (loop.WorkdirBusyError, loop.DivergedError))
    return written or busy or isinstance(e, MissingExtraError)


def main(argv: list[str] | None = None) -> int:
    """Run ``gdjax [train|eval] [flags]``; returns the process exit status."""
    start = time.perf_counter()
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    command = "train"
    if args[:1] == ["version"]:
        args = ["--version", *args[1:]]
    if args in (["--version"], ["-V"]):
        print(_versions())
        return 0
    if args[:1] == ["help"]:  # gdjax help [COMMAND]
        args = [*args[1:2], "--help"]
    if args and not args[0].startswith("-"):
        command, args = args[0], args[1:]
    if command not in COMMANDS:
        from gdjax._checks import closest

        if command == "bench":
            hint = " (the benchmarks live in a source checkout: python experiments/bench.py)"
        else:
            near = closest(command, COMMANDS)
            hint = f" (did you mean gdjax {near}?)" if near else ""
        print(
            f"gdjax: unknown command {command!r}; commands are {', '.join(COMMANDS)}{hint}",
            file=sys.stderr,
        )
        return 2
    verbose = "--verbose" in args
    if any(a in ("--help", "-h", "--helpfull") for a in args):
        try:
            print(_help(command))
        except MissingExtraError as e:
            print(f"gdjax {command}: {e}", file=sys.stderr)
            return 1
        return 0
    # Warnings for a person: one line each, without the source line that raised them.
    formatwarning = warnings.formatwarning
    if not verbose:
        warnings.formatwarning = lambda message, *_, **__: f"gdjax {command}: warning: {message}\n"
    try:
        return _run(command, args, start)
    except KeyboardInterrupt as e:  # the trainer's says where it stopped and what resumes
        where = f" {e}" if str(e) else ""
        print(f"gdjax {command}: interrupted{where}", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:  # one line at the boundary; --verbose shows the traceback
        if verbose:
            traceback.print_exc()
        usage = isinstance(e, (ValueError, KeyError, FileNotFoundError, NotADirectoryError))
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        plain = usage or _complete(e)  # the message says it all
        code = isinstance(e, ConfigFileError)  # the user's own code: its traceback helps
        hint = "" if verbose or (plain and not code) else " (--verbose shows the traceback)"
        kind = "" if plain else f"{type(e).__name__}: "
        print(f"gdjax {command}: {kind}{message}{hint}", file=sys.stderr)
        return 2 if usage else 1
    finally:
        warnings.formatwarning = formatwarning


def _switch(variable: str, on: str, off: str) -> bool:
    """``$variable`` as a switch of the command's process: 1 (``on``, the default) or 0
    (``off``); any other value is a :class:`UsageError` saying both."""
    value = os.environ.get(variable, "1").strip()
    if value not in ("0", "1"):
        raise UsageError(f"{variable}={value!r}: expected 1 ({on}, the default) or 0 ({off})")
    return value == "1"


def _host_memory_setting() -> bool:
    """Make ``gdjax.host_memory.retain_host_memory()`` unless ``$GDJAX_RETAIN_HOST_MEMORY`` is
    ``0``; whether it is now in effect. Runs before anything imports numpy or jax."""
    if not _switch(HOST_MEMORY_VARIABLE, "keep freed memory for reuse", "leave malloc alone"):
        return False
    from gdjax.host_memory import retain_host_memory

    return retain_host_memory(warn=False)


def _xla_cache_setting() -> str | None:
    """Point JAX's persistent compilation cache at ``<gdjax's cache>/xla``, so that a later run
    of the same network and settings reads its compiled programs instead of compiling them
    again (the main job's start: about 4 s). Every program is kept, not only those that took
    a second or more to compile (JAX's default; ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``
    overrides): a run's start compiles about a dozen that take 0.1-1 s each. Left alone where
    ``$JAX_COMPILATION_CACHE_DIR`` already names one, where ``$GDJAX_XLA_CACHE`` is ``0``, and
    where the folder cannot be written. Sets the environment only, before anything imports
    jax; returns the folder."""
    on = _switch(
        XLA_CACHE_VARIABLE, "keep compiled programs for later runs", "compile in every run"
    )
    if not on or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if not _jaxlib_loads_cached_programs_quietly():
        return None
    from gdjax._cache import cache_dir

    folder = cache_dir() / "xla"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: every run compiles, as without the cache
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return None
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    os.environ.setdefault(MIN_COMPILE_TIME_VARIABLE, "0")
    return str(folder)


def _no_persistent_cache() -> None:
    """Compile every program of this process afresh, whatever cache ``$JAX_COMPILATION_CACHE_DIR``
    or :func:`_xla_cache_setting` named: a pmap run of several processes that read its steps
    from the cache hung for ever in its first step's all-reduce (jax 0.12.1, Gloo on the CPU;
    reproduced in 5 of 5 runs, none with the cache off, 2026-12-07). Before anything compiles."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)


def _jaxlib_loads_cached_programs_quietly() -> bool:
    """jaxlib 0.8 logs two error lines ("... could lead to execution errors such as SIGILL")
    for every program it reads back from the cache on the machine that compiled it; 0.10 reads
    them quietly (0.9 is not checked, so left to compile)."""
    from gdjax import _extras

    return _extras.jaxlib_version() >= (0, 10)


_PARKED: list[object] = []  # grain's deleter pool, once _unlink_shared_batches took it away
# Where grain keeps its shared-memory batches: under ``ipc`` since grain 0.2.16, beside it in
# 0.2.15 (the oldest grain gdjax supports).
_GRAIN_SHARED_MEMORY = (
    "grain._src.python.ipc.shared_memory_array",
    "grain._src.python.shared_memory_array",
)


def _unlink_shared_batches() -> None:
    """Let go of the batches grain's worker processes handed over in shared memory, and wait
    until they are unlinked: grain unlinks each when the main process drops it, in a thread
    pool, which skipping the interpreter's teardown cut short; multiprocessing's resource
    tracker then cleaned up after us and printed "There appear to be 52 leaked shared_memory
    objects" (50: the pool's backlog). Does nothing where grain's loader never ran."""
    module = next((sys.modules[m] for m in _GRAIN_SHARED_MEMORY if m in sys.modules), None)
    if module is None:
        return
    import gc

    arrays = getattr(module, "SharedMemoryArray", None)
    deleter = getattr(arrays, "_del_thread_pool", None)
    if deleter is not None:  # a ThreadPool of one thread: a no-op through it waits for the rest
        deleter.apply_async(lambda: None).wait(EXIT_GRACE_SECONDS / 2)
        # The rest are unlinked here, one after another: while grain's thread closed some and
        # this one others, a close could fail (EBADF) and its unlink be skipped. The pool itself
        # is kept (not finalized here), to be ended at exit as before.
        _PARKED.append(deleter)
        arrays._del_thread_pool = None
    gc.collect()


def entry_point() -> None:
    """The console script: the process's malloc and compilation-cache settings first, then
    :func:`main`."""
    try:
        _host_memory_setting()
        _xla_cache_setting()
    except UsageError as e:
        print(f"gdjax: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        status = main()
    except KeyboardInterrupt:  # a second Ctrl-C as main() returned from the first one's
        status = INTERRUPTED
    if status == INTERRUPTED:
        try:
            _leave_after_an_interrupt()
        except KeyboardInterrupt:  # another Ctrl-C before its handler was in place
            _leave(INTERRUPTED)
    sys.exit(status)


def _leave(status: int, *_: object) -> None:
    """Leave now with ``status``, without the interpreter's teardown (also as a signal
    handler, which may run in the middle of a write to stderr)."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(status)


def _leave_after_an_interrupt() -> None:
    """The way out after a Ctrl-C: the clean-up that matters, then no interpreter teardown.

    A Ctrl-C lets jaxlib's wait for a compilation return while XLA goes on compiling in a
    thread of its own; the interpreter's teardown under that thread crashed the process
    (SIGSEGV, after the message). Everything of ours is closed by now: skip the teardown. The
    clean-up left has a deadline: past it the process leaves without it (what it would have
    unlinked, multiprocessing's resource tracker unlinks). Another Ctrl-C during the clean-up
    leaves at once, quietly: it raised KeyboardInterrupt wherever the clean-up was, and its
    traceback followed the one line ("Exception ignored in: <function _xla_gc_callback ...>").
    """
    signal.signal(signal.SIGINT, functools.partial(_leave, INTERRUPTED))
    import threading

    deadline = threading.Timer(EXIT_GRACE_SECONDS, _leave, (INTERRUPTED,))
    deadline.daemon = True
    deadline.start()
    _unlink_shared_batches()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    _leave(INTERRUPTED)


if __name__ == "__main__":
    entry_point()
