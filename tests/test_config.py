"""The training configuration and its command line.

Flag types come from the annotations, help from the field metadata, both flag
spellings work, and a bad command line exits with status 2 and at most three
short lines (no traceback, no usage) before anything loads data.
"""

import argparse
import dataclasses
import os
import subprocess
import sys
import typing

import pytest

from sparsenet_jax.training import build, flags
from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training.config import ConfigError, TrainConfig

PREFIX = "python -m sparsenet_jax.train: error: "


def bad_invocation(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run parse_args on a bad command line; check the shape of what the user sees."""
    with pytest.raises(SystemExit) as exit_info:
        flags.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 3, err
    assert lines[0].startswith(PREFIX), err
    assert "Traceback" not in err and "usage:" not in err
    assert lines[-1].endswith("see --help"), err
    return lines


# ---------------------------------------------------------------------------
# Types from annotations, help from metadata


@dataclasses.dataclass(frozen=True)
class _Clip:
    clip: float | None = dataclasses.field(default=None, metadata={"help": "gradient clip"})
    steps: tuple[float, ...] = dataclasses.field(default=(), metadata={"help": "steps"})


def test_flag_types_come_from_the_annotations():
    hints = typing.get_type_hints(TrainConfig)
    assert hints["num_processes"] == int | None
    assert flags.parse_args(["--num-processes", "2"]).num_processes == 2
    args = flags.build_parser(config_cls=_Clip).parse_args(["--clip", "0.5", "--steps", "1,2"])
    assert args.clip == 0.5 and isinstance(args.clip, float)  # not the string "0.5"
    assert args.steps == (1.0, 2.0)
    config = flags.parse_args(["--recipe", "digits", "--model-kwargs", '{"dropout_rate": 0.2}'])
    assert config.model_kwargs == {"dropout_rate": 0.2}
    assert flags.parse_args(["--recipe", "digits", "--nesterov", "off"]).nesterov is False


def test_float_or_none_flag_rejects_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        flags.build_parser(config_cls=_Clip).parse_args(["--clip", "abc"])
    assert exit_info.value.code == 2
    assert "argument --clip: invalid float value: 'abc'" in capsys.readouterr().err


def test_unsupported_annotation_raises_when_the_parser_is_built():
    @dataclasses.dataclass
    class Bad:
        sizes: list[int] = dataclasses.field(default_factory=list, metadata={"help": "sizes"})

    with pytest.raises(TypeError, match=r"no command-line parser for the annotation list\[int\]"):
        flags.build_parser(config_cls=Bad)

    @dataclasses.dataclass
    class NoHelp:
        size: int = 3

    with pytest.raises(TypeError, match=r"NoHelp\.size: no metadata"):
        flags.build_parser(config_cls=NoHelp)


def test_help_comes_from_metadata_in_groups(capsys):
    with pytest.raises(SystemExit) as exit_info:
        flags.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    for field in dataclasses.fields(TrainConfig):
        assert " ".join(field.metadata["help"].split()) in flat, field.name
        assert "--" + field.name.replace("_", "-") in text
    assert "--batch_size" not in text.replace("(--batch_size)", "")  # only the dash form shown
    titles = ["recipe and model:", "data:", "optimisation:", "run: "]
    assert all(title in text for title in titles)
    assert [text.index(t) for t in titles] == sorted(text.index(t) for t in titles)
    assert "(default: 64; imagenet: 256)" in flat  # the default, and the recipe that changes it


# ---------------------------------------------------------------------------
# Flags, recipes, extras


@pytest.mark.parametrize(
    "argv",
    [["--batch_size", "32"], ["--batch-size", "32"], ["--batch_size=32"], ["--batch-size=32"]],
)
def test_both_flag_spellings(argv):
    assert flags.parse_args(["--recipe", "digits", *argv]).batch_size == 32


def test_every_field_takes_both_spellings():
    parser = flags.build_parser()
    spellings = {s for action in parser._actions for s in action.option_strings}
    for field in dataclasses.fields(TrainConfig):
        assert {"--" + field.name, "--" + field.name.replace("_", "-")} <= spellings


def test_recipes_set_defaults_and_flags_override():
    digits = flags.parse_args(["--recipe", "digits"])
    assert (digits.model, digits.dataset, digits.workdir) == (
        "sparsenet-13-8",
        "digits",
        "runs/digits",
    )
    assert digits.augment_flip is False and digits.lr_boundaries == (12.0, 17.0)
    imagenet = flags.parse_args(["--recipe", "imagenet", "--epochs", "5", "--workdir", "w"])
    assert (imagenet.batch_size, imagenet.epochs, imagenet.workdir) == (256, 5, "w")
    assert flags.parse_args([]) == config_lib.from_dict({"workdir": "runs/cifar10"})


def test_parse_with_extras_returns_just_the_extras(capsys):
    def add_extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--topology", default="v5e-8")
        parser.add_argument("--json", action="store_true")

    config, extras = flags.parse_with_extras(
        ["--recipe", "digits", "--batch_size", "32", "--json"],
        prog="python -m sparsenet_jax.aot",
        add_extra=add_extra,
    )
    assert config.batch_size == 32 and config.dataset == "digits"
    assert vars(extras) == {"topology": "v5e-8", "json": True}
    with pytest.raises(SystemExit) as exit_info:
        flags.parse_with_extras(
            ["--dtype", "bf16"], prog="python -m sparsenet_jax.aot", add_extra=add_extra
        )
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m sparsenet_jax.aot: error: --dtype:")


# ---------------------------------------------------------------------------
# Bad command lines: exit 2, at most 3 lines, a suggestion where one is close


@pytest.mark.parametrize(
    ("argv", "error", "suggestion"),
    [
        (["--batch_sise", "32"], "unrecognized arguments: --batch_sise 32", "--batch-size?"),
        (["--batch", "32"], "unrecognized arguments: --batch 32", "--batch-size?"),
        (["--lr-boundary", "3"], "unrecognized arguments: --lr-boundary", "--lr-boundaries?"),
        (["--recipe", "cifar1"], "--recipe: unknown 'cifar1'", "'cifar10'?"),
        (
            ["--dtype", "bf16"],
            "--dtype: must be one of float32, bfloat16, got 'bf16'",
            "'bfloat16'?",
        ),
        (["--lr", "abc"], "argument --lr: invalid float value: 'abc'", None),
        (["--batch_size", "abc"], "argument --batch_size: invalid int value: 'abc'", None),
        (["--model", "sparsenet-41-24"], "--model: depth 41 does not fit the layout", None),
        (["--model-kwargs", '{"dropout": 0.2}'], "unknown key 'dropout'", "'dropout_rate'?"),
        (["--model-kwargs", "{bad"], "--model-kwargs: not valid JSON", None),
        (["--lr"], "argument --lr: expected one argument", None),
        (["--compilation-cache-dir", ""], "--compilation-cache-dir: must not be empty", None),
    ],
)
def test_bad_invocation(argv, error, suggestion, capsys):
    lines = bad_invocation(argv, capsys)
    assert error in lines[0]
    if suggestion is None:
        assert len(lines) == 1 and "did you mean" not in lines[0]
    elif suggestion.startswith("--"):  # a flag: its own line
        assert lines[1] == f"did you mean {suggestion} see --help"
    else:  # a value: in the error line, which names the flag
        assert f"did you mean {suggestion}" in lines[0]


@pytest.mark.parametrize(
    ("recipe", "model", "stem"),
    [
        ("digits", "sparsenet-121-32", "imagenet"),
        ("cifar10", "densenet-121", "imagenet"),
        ("imagenet", "sparsenet-40-24", "cifar"),
        ("imagenet", "resnet-56", "cifar"),
    ],
)
def test_model_that_does_not_fit_the_dataset(recipe, model, stem, capsys):
    lines = bad_invocation(["--recipe", recipe, "--model", model], capsys)
    assert f"--model: {model} has the {stem} stem" in lines[0]
    config = config_lib.from_dict({**config_lib.RECIPES[recipe], "recipe": recipe, "model": model})
    with pytest.raises(ConfigError, match=f"^model: {model} has the {stem} stem"):
        build.check_model(config)  # config is data: the build step checks the network


def test_config_imports_no_model_code():
    code = (
        "import sys, sparsenet_jax.training.config as c; c.from_dict({'model': 'nonsense'}); "
        "print(sorted(m for m in sys.modules if m.startswith(('flax', 'sparsenet_jax.model'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_explicit_stem_is_a_choice():
    argv = ["--recipe", "digits", "--model", "sparsenet-121-32", "--model-kwargs"]
    config = flags.parse_args([*argv, '{"stem": "cifar"}'])
    assert config.model_kwargs == {"stem": "cifar"}


def test_misspelt_flag_through_the_real_cli_suggests_the_right_one(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.train", "--batch_sise", "32"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines == [
        PREFIX + "unrecognized arguments: --batch_sise 32",
        "did you mean --batch-size? see --help",
    ]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------
# Fields and validation


def test_new_fields_and_their_defaults():
    config = flags.parse_args(["--recipe", "digits"])
    assert config.compilation_cache_dir == "auto" and config.dtype == "auto"
    assert config_lib.DTYPES == ("auto", "float32", "bfloat16")
    argv = ["--recipe", "digits", "--compilation-cache-dir", "none", "--dtype", "bfloat16"]
    config = flags.parse_args(argv)
    assert (config.compilation_cache_dir, config.dtype) == ("none", "bfloat16")


# A changed value for each field: identity fields must be refused on resume, the rest accepted.
_CHANGED = {
    "model": "sparsenet-13-6",
    "model_kwargs": {"dropout_rate": 0.1},
    "dataset": "cifar10",
    "dtype": "bfloat16",
    "seed": 7,
    "batch_size": 16,
    "augment_pad": 0,
    "augment_flip": True,
    "image_size": 48,
    "loader": "grain",
    "epochs": 30,
    "lr": 0.05,
    "max_steps": 3,
    "eval_batch_size": 100,
    "weight_decay": 5e-4,
    "log_every_steps": 5,
}


@pytest.mark.parametrize("field", sorted(_CHANGED))
def test_identity_fields_decide_what_a_resume_may_change(tmp_path, field):
    """Issue 17: the identity set is tested by what it does, not against a copy of itself."""
    from sparsenet_jax.training import identity
    from sparsenet_jax.training.errors import TrainingError

    base = flags.parse_args(["--recipe", "digits", "--workdir", str(tmp_path)])
    (tmp_path / "config.json").write_text(config_lib.to_json(base))
    changed = dataclasses.replace(base, **{field: _CHANGED[field]})
    if field in config_lib.IDENTITY_FIELDS:
        with pytest.raises(TrainingError, match=f"{field}: workdir has"):
            identity.check_identity(tmp_path, changed, None)
    else:
        identity.check_identity(tmp_path, changed, None)
    assert {"model", "dataset", "seed", "batch_size", "loader"} <= set(config_lib.IDENTITY_FIELDS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": "64"}, "batch_size: expected int, got '64'"),
        ({"nesterov": 1}, "nesterov: expected bool, got 1"),
        ({"lr": None}, "lr: expected float, got None"),
        ({"model_kwargs": [1]}, "model_kwargs: expected dict[str, Any], got [1]"),
        ({"epochs": 0}, "epochs: must be >= 1, got 0"),
        ({"bogus": 1}, "unknown config field(s) ['bogus']"),
        ({"dataset": "folder"}, "data_dir: --dataset folder reads a folder"),
        ({"image_size": 8}, "image_size: digits images are 32x32; --image-size (8) applies"),
        ({"dataset": "cifar10", "data_dir": "c.npz"}, "c.npz looks like a packed .npz of JPEGs"),
    ],
)
def test_from_dict_names_the_bad_field(values, message):
    with pytest.raises(ConfigError) as err:
        config_lib.from_dict(
            {"recipe": "digits", "dataset": "digits", "model": "sparsenet-13-8", **values}
        )
    assert message in str(err.value)


def test_from_dict_round_trips_json():
    import json

    config = flags.parse_args(["--recipe", "digits", "--lr", "1"])
    again = config_lib.from_dict(json.loads(config_lib.to_json(config)))
    assert again == config and again.lr_boundaries == (12.0, 17.0)


# ---------------------------------------------------------------------------
# Short-budget fields: the lr schedule, warm-up and label smoothing


def test_schedule_fields_default_to_the_papers_recipe():
    config = flags.parse_args(["--recipe", "cifar10"])
    assert (config.lr_schedule, config.warmup_epochs, config.label_smoothing) == (
        "piecewise",
        0.0,
        0.0,
    )
    argv = ["--lr-schedule", "cosine", "--warmup-epochs", "1.5", "--label-smoothing", "0.1"]
    config = flags.parse_args(["--recipe", "digits", *argv])
    assert (config.lr_schedule, config.warmup_epochs, config.label_smoothing) == (
        "cosine",
        1.5,
        0.1,
    )


@pytest.mark.parametrize(
    ("argv", "error", "suggestion"),
    [
        (["--lr-schedule", "cosin"], "--lr-schedule: unknown 'cosin'", "'cosine'?"),
        (["--label-smoothing", "1"], "--label-smoothing: must be in [0, 1), got 1", None),
        (["--label-smoothing", "-0.1"], "--label-smoothing: must be in [0, 1), got -0.1", None),
        (["--label-smoothing", "nan"], "--label-smoothing: must be a finite number", None),
        (["--lr-schedule", "cosine", "--warmup-epochs", "-1"], "must be >= 0, got -1", None),
        (["--lr-schedule", "cosine", "--warmup-epochs", "inf"], "must be a finite number", None),
        (
            ["--recipe", "digits", "--lr-schedule", "cosine", "--warmup-epochs", "20"],
            "--warmup-epochs: must be below epochs (20), got 20",
            None,
        ),
        (
            ["--warmup-epochs", "2"],
            "--warmup-epochs: only the cosine schedule has a warm-up",
            None,
        ),
    ],
)
def test_bad_schedule_fields(argv, error, suggestion, capsys):
    lines = bad_invocation(argv, capsys)
    assert error in lines[0]
    if suggestion is None:
        assert len(lines) == 1 and "did you mean" not in lines[0]
    else:
        assert f"did you mean {suggestion}" in lines[0]


def test_cifar10_cpu_recipe_is_a_sparsenet_with_a_short_schedule():
    config = flags.parse_args(["--recipe", "cifar10-cpu"])
    assert config.workdir == "runs/cifar10-cpu" and config.dataset == "cifar10"
    assert config.model.startswith("sparsenet-") and config.lr_schedule == "cosine"
    assert config.epochs < 100 and config.dtype == "float32"
    build.check_model(config)  # the network fits 32×32 images
    # The paper's recipe is unchanged.
    paper = flags.parse_args(["--recipe", "cifar10"])
    assert (paper.model, paper.epochs, paper.lr_schedule) == ("sparsenet-40-24", 300, "piecewise")
    assert (paper.label_smoothing, paper.lr_boundaries) == (0.0, (150.0, 225.0))


def test_the_conv_impl_and_per_input_conv_are_how_not_what_and_may_change_on_resume(tmp_path):
    """A CPU workdir recorded before the GEMM weight gradient became the CPU default
    (model_kwargs {}) resumes with it, and one recorded with it resumes on a GPU;
    per_input_conv may be switched on for a resumed run; any other model kwarg
    still refuses."""
    from sparsenet_jax.training import identity
    from sparsenet_jax.training.errors import TrainingError

    base = flags.parse_args(["--recipe", "digits", "--workdir", str(tmp_path)])
    for recorded, asked in [
        ({}, {"conv_impl": "shift-dw"}),
        ({"conv_impl": "shift-dw"}, {}),
        ({}, {"per_input_conv": True}),  # the TPU compile-time switch, too
    ]:
        (tmp_path / "config.json").write_text(
            config_lib.to_json(dataclasses.replace(base, model_kwargs=recorded))
        )
        identity.check_identity(tmp_path, dataclasses.replace(base, model_kwargs=asked), None)
        old_manifest = config_lib.identity(dataclasses.replace(base, model_kwargs=recorded))
        identity.check_identity(
            tmp_path, dataclasses.replace(base, model_kwargs=asked), old_manifest
        )
    other = dataclasses.replace(base, model_kwargs={"conv_impl": "xla", "share_stats": True})
    with pytest.raises(TrainingError, match="model_kwargs: workdir has"):
        identity.check_identity(tmp_path, other, None)
