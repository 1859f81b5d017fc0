"""Property-based tests: the name grammar against the parameter arithmetic, and the schedule rule.

Over random names (family, BC or not, depth — valid or not —, growth rates,
schedule base, number of classes) ``create_model`` either builds a model whose
Flax parameter count equals :func:`~sparsenet_jax.model.arithmetic.expected_params`
(an independent count from the layout rules), or raises ``ValueError`` /
``TypeError`` naming the field that is wrong. Shapes come from
``jax.eval_shape``, so nothing is computed; depths stay ≤ 60 to keep tracing fast.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from sparsenet_jax.model.arithmetic import block_output_width, expected_params
from sparsenet_jax.model.presets import create_model
from sparsenet_jax.model.schedule import Schedule

FAMILIES = ("sparsenet", "densenet", "resnet", "sparse-resnet")


def depth_is_valid(family: str, bc: bool, depth: int) -> bool:
    """The layout rule of presets.py, restated (depth < 164: no ResNet bottleneck)."""
    if family in ("resnet", "sparse-resnet"):
        units, per_stage = depth - 2, 3 * 2
    else:
        units, per_stage = depth - 4, 3 * (2 if bc else 1)
    return units > 0 and units % per_stage == 0


def transition_starves(
    family: str, bc: bool, depth: int, growth: tuple[int, ...], base: int
) -> bool:
    """Whether a BC transition (compression 0.5) would be left with 0 channels: a block
    whose output is 1 channel wide (the layout rule of presets.py, restated)."""
    if not bc:
        return False  # compression 1: a transition keeps every channel
    layers = (depth - 4) // 6
    growths = growth * 3 if len(growth) == 1 else growth
    schedule = Schedule("sparse" if family == "sparsenet" else "dense", base)
    channels = 2 * growths[0]
    for block, k in enumerate(growths):
        if block > 0:
            channels = math.floor(0.5 * channels)
            if channels < 1:
                return True
        channels = block_output_width(schedule, channels, k, layers)
    return False


def sometimes(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` five times in six, else ``invalid``: about half the examples build a model."""
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda ok: valid if ok else invalid)


@st.composite
def model_configs(draw):
    family = draw(st.sampled_from(FAMILIES))
    concat = family in ("sparsenet", "densenet")
    bc = concat and draw(st.booleans())
    per_stage = 6 if not concat or bc else 3
    fixed = 4 if concat else 2
    valid_depths = [fixed + per_stage * n for n in range(1, 60) if fixed + per_stage * n <= 60]
    # The depth is given in the name (digits only) or as the ``depth=`` override.
    override = draw(st.booleans())
    depth = draw(sometimes(st.sampled_from(valid_depths), st.integers(-2 if override else 0, 60)))
    growth: tuple[int, ...] = ()
    if concat:
        one = sometimes(st.integers(1, 12), st.just(0))
        growth = draw(st.one_of(st.tuples(one), st.tuples(st.integers(1, 12), one, one)))
    base = draw(sometimes(st.integers(2, 4), st.integers(-1, 1)))
    num_classes = draw(sometimes(st.integers(1, 20), st.integers(-2, 0)))
    return family, bc, depth, override, growth, base, num_classes


def preset_name(family: str, bc: bool, depth: int, growth: tuple[int, ...]) -> str:
    if family in ("resnet", "sparse-resnet"):
        return f"{family}-{depth}"
    return f"{family}{'-bc' if bc else ''}-{depth}-{'-'.join(map(str, growth))}"


def flax_param_count(model) -> int:
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    )
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes["params"]))


@settings(
    max_examples=30,
    deadline=None,  # the first trace of a depth can take a few seconds on 2 cores
    suppress_health_check=[HealthCheck.too_slow],
)
@given(model_configs())
# Found under jax 0.7.2: a BC transition left with 0 channels (its initialiser divided by 0).
@example(("sparsenet", True, 10, False, (1,), 3, 1))
def test_create_model_builds_the_counted_model_or_names_the_bad_field(config):
    family, bc, depth, override, growth, base, num_classes = config
    named_depth = 40 if family in ("sparsenet", "densenet") else 56  # valid, replaced
    name = preset_name(family, bc, named_depth if override else depth, growth)
    kwargs = {"depth": depth} if override else {}
    bad: dict[str, tuple[str, ...]] = {}  # field → words its message must hold
    if not depth_is_valid(family, bc, depth):
        bad["depth"] = ("depth", str(depth))
    if any(g < 1 for g in growth):
        bad["growth"] = ("growth_rates must be positive", str(growth[0]))
    if base < 2:
        bad["base"] = (f"base must be >= 2, got {base}",)
    if num_classes < 1:
        bad["num_classes"] = (f"num_classes must be a positive integer, got {num_classes}",)
    if not bad and transition_starves(family, bc, depth, growth, base):
        bad["transition"] = ("would have 0 channels",)
    try:
        model = create_model(name, num_classes=num_classes, base=base, **kwargs)
    except (ValueError, TypeError) as err:
        assert bad, f"{name} {kwargs} (base {base}, {num_classes} classes) was refused: {err}"
        # The checks run in some order: the message names one of the bad fields.
        assert any(all(w in str(err) for w in words) for words in bad.values()), (bad, str(err))
        event("refused")
        return
    assert not bad, f"{name} was built despite {sorted(bad)}"
    assert flax_param_count(model) == expected_params(model), name
    event(f"built {family}")


def exact_floor_log(layer: int, base: int) -> int:
    """floor(log_base layer) in integers (math.log rounds 1000 / base 10 down to 2)."""
    power = 0
    while base ** (power + 1) <= layer:
        power += 1
    return power


@settings(max_examples=300, deadline=None)
@given(base=st.integers(2, 8), layer=st.integers(1, 5000))
def test_sparse_schedule_reads_log_many_distinct_earlier_outputs(base, layer):
    reads = Schedule("sparse", base).inputs(layer)
    assert len(set(reads)) == len(reads)
    assert all(0 <= i <= layer - 1 for i in reads)
    assert reads[0] == layer - 1  # the newest output is always read, first
    assert list(reads) == sorted(reads, reverse=True)
    assert len(reads) == exact_floor_log(layer, base) + 1
    assert all(layer - i == base**j for j, i in enumerate(reads))
    # The block output is the same rule applied to a virtual layer n + 1.
    assert Schedule("sparse", base).block_output(layer - 1) == reads


@settings(max_examples=100, deadline=None)
@given(layer=st.integers(1, 500), base=st.integers(2, 8))
def test_dense_schedule_reads_everything(layer, base):
    assert Schedule("dense", base).inputs(layer) == tuple(range(layer))


def test_floor_log_helper_is_exact():
    assert exact_floor_log(1000, 10) == 3 and math.floor(math.log(1000, 10)) == 2
    assert exact_floor_log(8, 2) == 3 and exact_floor_log(7, 2) == 2


@settings(max_examples=50, deadline=None)
@given(
    base=st.one_of(
        st.integers(-3, 1), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)
    )
)
def test_schedule_refuses_bad_bases_by_name(base):
    assume(not (isinstance(base, int) and not isinstance(base, bool) and base >= 2))
    try:
        Schedule("sparse", base)
    except (TypeError, ValueError) as err:
        assert "base" in str(err) and (repr(base) in str(err) or str(base) in str(err))
    else:
        raise AssertionError(f"Schedule accepted base {base!r}")
