"""Named configurations: the paper's networks, the baselines, and the rules behind their names.

Names are lower case:

* CIFAR, concatenation: ``sparsenet-DEPTH-K``, ``sparsenet-bc-DEPTH-K``,
  ``densenet-DEPTH-K``, ``densenet-bc-DEPTH-K``; ``K`` may be three growth
  rates, one a block (``sparsenet-100-16-32-64``). Units a block: (DEPTH − 4)/3,
  halved for bottleneck-compression (BC) models.
* CIFAR, summation (pre-activation, widths 16/32/64): ``resnet-DEPTH`` and
  ``sparse-resnet-DEPTH``. Basic units, (DEPTH − 2)/6 a stage, below depth 164;
  bottleneck units, (DEPTH − 2)/9 a stage, from 164 on (the ResNet papers' convention).
* ImageNet: ``sparsenet-{121,169,201}-32``, ``sparsenet-201-48``, ``densenet-{121,169,201}``.

Any DEPTH and K that fit these rules parse; :func:`list_models` lists the named ones.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from sparsenet_jax._text import close_matches
from sparsenet_jax.model.network import SparseNet
from sparsenet_jax.model.schedule import Schedule

PAPER_PRESETS: tuple[str, ...] = (
    "sparsenet-40-24",
    "sparsenet-100-24",
    "sparsenet-100-36",
    "sparsenet-100-16-32-64",
    "sparsenet-100-32-64-128",
    "sparsenet-bc-100-24",
    "sparsenet-bc-100-36",
    "sparsenet-bc-100-16-32-64",
    "sparsenet-bc-100-32-64-128",
    "sparsenet-bc-100-12",
    "sparsenet-bc-400-12",
    "densenet-40-12",
    "densenet-100-12",
    "densenet-100-24",
    "densenet-bc-100-12",
    "densenet-bc-250-24",
    "densenet-bc-190-40",
    "resnet-56",
    "resnet-110",
    "resnet-164",
    "resnet-1001",
    "sparse-resnet-56",
    "sparse-resnet-110",
    "sparse-resnet-164",
    "sparse-resnet-1001",
    "sparsenet-121-32",
    "sparsenet-169-32",
    "sparsenet-201-32",
    "sparsenet-201-48",
    "densenet-121",
    "densenet-169",
    "densenet-201",
)

# DenseNet-121/169/201 block layouts; SparseNet-N uses the same with sparse blocks.
IMAGENET_BLOCKS: dict[int, tuple[int, ...]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
}
RESNET_WIDTHS: tuple[int, int, int] = (16, 32, 64)
RESNET_BOTTLENECK_FROM_DEPTH = 164

_CONCAT_RE = re.compile(r"^(sparsenet|densenet)(-bc)?-(\d+)-(\d+(?:-\d+-\d+)?)$")
_SUM_RE = re.compile(r"^(sparse-)?resnet-(\d+)$")
_IMAGENET_RE = re.compile(r"^(?:sparsenet-(121|169|201)-(\d+)|densenet-(121|169|201))$")

NAME_RULES = (
    "sparsenet[-bc]-DEPTH-K, densenet[-bc]-DEPTH-K (K or K1-K2-K3), "
    "[sparse-]resnet-DEPTH, sparsenet-{121,169,201}-K, densenet-{121,169,201}"
)

# Arguments of create_model that change the layout rather than a module field.
LAYOUT_OVERRIDES: tuple[str, ...] = ("depth", "growth_rate", "bottleneck", "base")


@dataclasses.dataclass(frozen=True)
class PresetSpec:
    """What a name says: family, schedule, depth, growth rates, unit type."""

    family: str  # "cifar-concat", "cifar-sum" or "imagenet"
    schedule: str  # "sparse" or "dense"
    depth: int
    growth_rates: tuple[int, ...]
    bottleneck: bool


def list_models() -> list[str]:
    """The named presets (the paper's rows and the baselines)."""
    return list(PAPER_PRESETS)


def parse_name(name: str) -> PresetSpec:
    """Read a preset name; ``ValueError`` listing the valid names if it is not one."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {name!r}")
    key = name.strip().lower()
    if m := _IMAGENET_RE.match(key):
        if m.group(3):
            return PresetSpec("imagenet", "dense", int(m.group(3)), (32,), True)
        return PresetSpec("imagenet", "sparse", int(m.group(1)), (int(m.group(2)),), True)
    if m := _CONCAT_RE.match(key):
        growths = tuple(int(g) for g in m.group(4).split("-"))
        schedule = "sparse" if m.group(1) == "sparsenet" else "dense"
        return PresetSpec("cifar-concat", schedule, int(m.group(3)), growths, bool(m.group(2)))
    if m := _SUM_RE.match(key):
        depth = int(m.group(2))
        schedule = "sparse" if m.group(1) else "dense"
        return PresetSpec(
            "cifar-sum", schedule, depth, RESNET_WIDTHS, depth >= RESNET_BOTTLENECK_FROM_DEPTH
        )
    close = _respelled(key) or close_matches(key, PAPER_PRESETS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}.{hint} Named presets: {', '.join(PAPER_PRESETS)}. "
        f"Names follow: {NAME_RULES}."
    )


_FAMILIES = ("sparsenet", "densenet", "resnet", "sparse-resnet")


def _respelled(key: str) -> list[str]:
    """``key`` with its family word corrected, where that gives a valid name.

    Most names are patterns, not presets (the digits recipe's sparsenet-13-8 is not
    one): for "sparsnet-13-8" the closest preset is far off, the respelled name is it.
    """
    m = re.match(r"^(.+?)((?:-bc)?(?:-\d+)+)$", key)
    if not m or m.group(1) in _FAMILIES:  # spelt right: the numbers are wrong
        return []
    respelled = [family + m.group(2) for family in close_matches(m.group(1), _FAMILIES, n=2)]
    return [name for name in respelled if _builds(name)]


def _builds(name: str) -> bool:
    """Whether ``name`` is a valid model name (its depth included)."""
    try:
        _layers_per_block(parse_name(name))
    except ValueError:
        return False
    return True


def _layers_per_block(spec: PresetSpec) -> tuple[int, ...]:
    depth = spec.depth
    if spec.family == "imagenet":
        if depth not in IMAGENET_BLOCKS:
            raise ValueError(
                f"ImageNet depth must be one of {sorted(IMAGENET_BLOCKS)}, got {depth}"
            )
        return IMAGENET_BLOCKS[depth]
    if spec.family == "cifar-concat":
        # 3 blocks of units (2 convs each for BC) + stem + 2 transitions + classifier.
        per_unit, fixed = (2 if spec.bottleneck else 1), 4
    else:
        # 3 stages of units (2 convs basic, 3 bottleneck) + stem + classifier.
        per_unit, fixed = (3 if spec.bottleneck else 2), 2
    units = depth - fixed
    if units <= 0 or units % (3 * per_unit):
        kind = "bottleneck" if spec.bottleneck else "plain/basic"
        raise ValueError(
            f"depth {depth} does not fit the layout of this {spec.family} model with {kind} "
            f"units: depth − {fixed} must be a positive multiple of {3 * per_unit}"
        )
    return (units // (3 * per_unit),) * 3


def build_kwargs(spec: PresetSpec, num_classes: int, base: int = 2) -> dict[str, Any]:
    """SparseNet constructor arguments for a parsed name."""
    growths = spec.growth_rates
    if len(growths) == 1:
        growths = growths * (4 if spec.family == "imagenet" else 3)
    if len(growths) != (4 if spec.family == "imagenet" else 3):
        raise ValueError(f"give one growth rate or one a block, got {spec.growth_rates}")
    schedule = Schedule(spec.schedule, base)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = dict(
        block_sizes=_layers_per_block(spec),
        growth_rates=tuple(growths),
        num_classes=num_classes,
        schedule=schedule,
    )
    if spec.family == "cifar-sum":
        widths = tuple(4 * g for g in growths) if spec.bottleneck else tuple(growths)
        kwargs.update(
            growth_rates=widths,
            aggregation="sum",
            unit="res_bottleneck" if spec.bottleneck else "basic",
        )
    else:
        kwargs.update(
            aggregation="concat",
            unit="bottleneck" if spec.bottleneck else "plain",
            compression=0.5 if spec.bottleneck else 1.0,
        )
        if spec.family == "imagenet":
            kwargs["stem"] = "imagenet"
    return kwargs


def create_model(name: str, num_classes: int = 10, **overrides: Any) -> SparseNet:
    """Build a named network.

    Args:
      name: a preset name (see :func:`list_models` and the module docstring).
      num_classes: width of the classifier.
      **overrides: layout overrides ``depth``, ``growth_rate`` (int or one a
        block), ``bottleneck``, ``base``; or any :class:`SparseNet` field
        (``dtype``, ``dropout_rate``, ``compression``, ``in_channels``, …).

    Returns:
      An (uninitialised) Linen module.
    """
    spec = parse_name(name)
    layout = {k: overrides.pop(k) for k in LAYOUT_OVERRIDES if k in overrides}
    if "depth" in layout:
        spec = dataclasses.replace(spec, depth=_positive_int("depth", layout["depth"]))
    if "growth_rate" in layout:
        growth = layout["growth_rate"]
        growths = (growth,) if not isinstance(growth, (tuple, list)) else tuple(growth)
        for g in growths:
            _positive_int("growth_rate", g)
        spec = dataclasses.replace(spec, growth_rates=growths)
    if "bottleneck" in layout:
        if not isinstance(layout["bottleneck"], bool):
            raise TypeError(f"bottleneck must be True or False, got {layout['bottleneck']!r}")
        spec = dataclasses.replace(spec, bottleneck=layout["bottleneck"])
    kwargs = build_kwargs(spec, num_classes, base=layout.get("base", 2))
    fields = {f.name for f in dataclasses.fields(SparseNet)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"unknown override(s) {unknown}; valid: {sorted(fields | set(LAYOUT_OVERRIDES))}"
        )
    kwargs.update(overrides)
    return SparseNet(**kwargs)


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be positive, got {value}")
    return value
