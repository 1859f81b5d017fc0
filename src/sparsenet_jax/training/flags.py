"""The command line of ``python -m sparsenet_jax.train`` (and of ``aot``): a flag per config field.

Every field of :class:`~sparsenet_jax.training.config.TrainConfig` is a flag
(``--batch-size 128``, or ``--batch_size 128``); a recipe (``--recipe cifar10``)
sets the defaults and flags override them. A field's annotation picks its
parser (an annotation no flag can fill raises at import) and
``metadata["help"]`` is its help text. A bad command line exits 2 in at most
three lines: the error, a close flag if there is one, and "see --help".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sparsenet_jax._text import close_matches
from sparsenet_jax.training.build import check_model
from sparsenet_jax.training.config import FIELD_TYPES, RECIPES, ConfigError, TrainConfig, from_dict

PROG = "python -m sparsenet_jax.train"


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


_PARSERS: dict[Any, tuple[Callable[[str], Any], str | None]] = {  # annotation: type, metavar
    bool: (_bool, "{true,false}"),
    int: (int, "N"),
    float: (float, "X"),
    str: (str, None),  # the metavar is the field's last word: MODEL, DIR, ...
    tuple[float, ...]: (_float_list, "X,Y,..."),
    dict[str, Any]: (_json_object, "JSON"),
}


def _converter(hint: Any) -> tuple[Callable[[str], Any], str | None]:
    """The argparse ``type`` and metavar of an annotation; ``TypeError`` if a flag can't fill it."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2:
        if type(None) in args:  # X | None: a flag gives an X; leaving it out keeps None
            return _converter(next(arg for arg in args if arg is not type(None)))
    if hint in _PARSERS:
        return _PARSERS[hint]
    raise TypeError(f"no command-line parser for the annotation {hint!r}")


_PARSED = [_converter(hint) for hint in FIELD_TYPES.values()]  # raises for a field no flag can fill


class _Parser(argparse.ArgumentParser):
    """Short errors: the error line, then a close flag if there is one; no usage."""

    def error(self, message: str) -> NoReturn:
        lines = [f"{self.prog}: error: {' '.join(message.split())}"]
        words = message.split(": ", 1)[-1].split()
        if message.startswith("unrecognized arguments: ") and words[0].startswith("--"):
            shown = [
                s for a in self._actions if a.help != argparse.SUPPRESS for s in a.option_strings
            ]
            typed = words[0].split("=", 1)[0].replace("_", "-")
            lines += [f"did you mean {m}?" for m in close_matches(typed, shown)]
        lines[-1] = lines[-1].rstrip(".") + ("; " if len(lines) == 1 else " ") + "see --help"
        self.exit(2, "\n".join(lines) + "\n")


DESCRIPTION = "Train SparseNet/DenseNet/ResNet."


def build_parser(
    prog: str = PROG, config_cls: type = TrainConfig, description: str = DESCRIPTION
) -> argparse.ArgumentParser:
    """A flag for every field of ``config_cls`` (default None: not given), in help groups.

    ``--batch-size`` is the spelling --help shows; ``--batch_size`` works too.
    ``description`` opens --help: what the command does.
    """
    parser = _Parser(
        prog=prog,
        usage="%(prog)s [--recipe NAME] [--FLAG VALUE ...]",
        description=f"{description} A recipe sets the defaults; flags "
        "override them. Every flag also takes underscores (--batch_size).",
        allow_abbrev=False,  # a prefix is ambiguous between --batch-size and --batch_size
    )
    hints = typing.get_type_hints(config_cls)
    groups: dict[str, Any] = {}
    for field in dataclasses.fields(config_cls):
        if "help" not in field.metadata:
            raise TypeError(f"{config_cls.__name__}.{field.name}: no metadata['help']")
        group = field.metadata.get("group", "options")
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        convert, metavar = _converter(hints[field.name])
        dash, given = "--" + field.name.replace("_", "-"), dict(dest=field.name, type=convert)
        groups[group].add_argument(
            dash,
            **given,
            default=None,
            metavar=metavar or field.name.upper().rsplit("_", 1)[-1],
            help=(field.metadata["help"] + _default_text(field)).replace("%", "%%"),
        )
        if dash != "--" + field.name:
            groups[group].add_argument("--" + field.name, **given, help=argparse.SUPPRESS)
    return parser


def _default_text(field: dataclasses.Field[Any]) -> str:
    """ " (default: 64; imagenet: 256)": the default, and the recipes that change it."""
    default = field.default_factory() if callable(field.default_factory) else field.default
    if field.name == "workdir" or default is None:
        return ""
    show = {k: r[field.name] for k, r in RECIPES.items() if r.get(field.name, default) != default}
    texts = [
        f"{k}: " + (",".join(map(str, v)) if isinstance(v, tuple) else json.dumps(v).strip('"'))
        for k, v in {"default": default, **show}.items()
    ]
    return f" ({'; '.join(texts)})"


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse the command line into a validated config; bad input exits with status 2."""
    return parse_with_extras(argv, prog=PROG, add_extra=lambda parser: None)[0]


def parse_with_extras(
    argv: Sequence[str] | None,
    *,
    prog: str,
    add_extra: Callable[[argparse.ArgumentParser], None],
    description: str = DESCRIPTION,
) -> tuple[TrainConfig, argparse.Namespace]:
    """:func:`parse_args` for a command that adds its own flags with ``add_extra``.

    Returns the validated config and a namespace of just the extra arguments.
    Bad input (a config flag's or an extra's) exits with status 2, as in parse_args.
    """
    parser = build_parser(prog, description=description)
    fields = {action.dest for action in parser._actions}
    add_extra(parser)
    args = vars(parser.parse_args(argv))
    given = {k: v for k, v in args.items() if k in FIELD_TYPES and v is not None}
    recipe = given.get("recipe", TrainConfig.recipe)
    try:
        config = from_dict({**RECIPES.get(recipe, {}), "workdir": f"runs/{recipe}", **given})
        check_model(config)
    except ConfigError as err:
        field, _, rest = str(err).partition(":")
        parser.error("--" + field.replace("_", "-").replace("/", "/--") + ":" + rest)
    return config, argparse.Namespace(**{k: v for k, v in args.items() if k not in fields})
