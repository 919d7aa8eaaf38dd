"""The gdjax command: help, presets, overrides, errors, and the no-argument run in smoke mode."""

import json

import pytest

from gdjax import cli


def test_help_lists_flags_and_config_fields(capsys):
    assert cli.main(["gdjax", "train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--workdir" in out and "--config.FIELD=VALUE" in out
    assert "learning_rate" in out and "dataset: mnist5k" in out


def test_unknown_field_is_an_error(capsys, tmp_path):
    assert cli.main(["gdjax", "train", f"--workdir={tmp_path}", "--config.no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err


def test_unknown_preset_and_command(capsys, tmp_path):
    assert cli.main(["gdjax", "train", f"--workdir={tmp_path}", "--config=imagenet21k"]) == 2
    assert "not a preset (default, cifar10, paper) nor a config file" in capsys.readouterr().err
    assert cli.main(["gdjax", "fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_resolves_presets():
    path, args, name = cli._resolve_presets(["--config=paper", "--config.batch_size=8"])
    assert name == "paper" and path.endswith("gdjax/configs/paper.py")
    assert args == ["--config.batch_size=8"]
    path, args, name = cli._resolve_presets(["--config", "cifar10", "--workdir=x"])
    assert (path, args, name) == (str(cli.preset_path("cifar10")), ["--workdir=x"], "cifar10")
    assert cli._resolve_presets([])[2] == "default"


def test_overrides_are_typed_and_applied():
    values = cli._parse_flags(
        str(cli.preset_path("default")),
        ["--config.optimizer.learning_rate=0.5", "--config.seed=3"],
        "gdjax",
    )
    assert values.config.optimizer.learning_rate == 0.5 and values.config.seed == 3
    with pytest.raises(Exception, match="seed"):
        cli._parse_flags(str(cli.preset_path("default")), ["--config.seed=abc"], "gdjax")


def test_no_argument_run_in_smoke_mode_learns_and_eval_agrees(tmp_path, capsys, monkeypatch):
    """`gdjax` = `gdjax train` on the embedded MNIST subset, capped at 100 steps here."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["gdjax", "--config.max_steps=100", "--config.progress=False"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    result = json.loads((tmp_path / "runs" / "default" / "result.json").read_text())
    assert result["steps"] == 100
    assert result["accuracy"] > 0.5, "100 steps of the default recipe must be far above chance"
    assert cli.main(["gdjax", "eval", "--workdir=runs/default"]) == 0
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.index("{") :])
    assert evaluated["step"] == 100
    assert evaluated["accuracy"] == pytest.approx(result["accuracy"])
