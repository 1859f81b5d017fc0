"""``block_impl="buffer"``: a block's layers as one scan over a fixed-width buffer, the same function.

Issue 19, lever 2: every step reads the same number of slots and runs one
unit body, so the loop compiles once; the parameter tree is the unrolled
block's, and logits, running statistics and gradients equal it.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

import sparsenet_jax as sj
from sparsenet_jax.model import block as block_module
from sparsenet_jax.model import buffer_scan
from sparsenet_jax.model.schedule import Schedule, slot_plan
from test_layers import TWO_SMALL_BLOCKS, _float64, square_loss
from test_shape_buckets import _images, assert_close_in_float32, assert_same_network

SLOW = pytest.mark.slow


# Small networks on 8×8 images keep the default run's compiles short.
CASES = [
    # sparse-BC, shared statistics; block 2's x_0 is 6 wide with slots of 8:
    # its slot ends in zero channels, inside the concatenation of layers 1, 2 and 4.
    ("sparsenet-bc-22-6", {"block_sizes": (2, 4), "growth_rates": (6, 8), "share_stats": True}),
    # summation: slots as wide as x_0, padding is adding zero slots
    pytest.param("sparse-resnet-20", {"block_sizes": (2, 3), "growth_rates": (8, 8)}, marks=SLOW),
    pytest.param("sparsenet-25-6", TWO_SMALL_BLOCKS, marks=SLOW),
    pytest.param("densenet-13-6", TWO_SMALL_BLOCKS, marks=SLOW),
    pytest.param("resnet-20", {"block_sizes": (2, 3), "growth_rates": (8, 16)}, marks=SLOW),
    pytest.param(
        "sparsenet-25-6",
        {**TWO_SMALL_BLOCKS, "share_stats": True, "remat": True},
        marks=SLOW,
    ),
    pytest.param("sparsenet-bc-46-6", {}, marks=SLOW),
]


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_buffer_block_matches_the_unrolled_block_in_float64(name, overrides):
    """Same tree and initial values; logits, loss, running statistics and gradients to 1e-10."""
    with _float64():
        kwargs = {"dtype": jnp.float64, "param_dtype": jnp.float64, **overrides}
        plain = sj.create_model(name, **kwargs)
        assert_same_network(plain, sj.create_model(name, block_impl="buffer", **kwargs), overrides)


def test_buffer_block_matches_the_unrolled_block_in_float32():
    """The float32 tolerances of tests/test_layers.py's block variants."""
    overrides = {"block_sizes": (4,), "growth_rates": (6,)}
    plain = sj.create_model("sparsenet-25-6", **overrides)
    assert_close_in_float32(plain, plain.clone(block_impl="buffer"), overrides)


@SLOW  # an option no backend uses by default
def test_recomputing_backward_equals_autodiff_of_the_scan(monkeypatch):
    """The custom backward pass (units recomputed from the final buffer, shared statistics)
    equals jax's own derivative of the forward scan, dropout included (one key a step)."""
    overrides = {"block_sizes": (4,), "growth_rates": (4,), "dropout_rate": 0.3}

    def autodiff(unit, plan, aggregation, share, x, variables, rngs):
        buffer, _, new_stats = buffer_scan._forward(
            unit, plan, aggregation, share, x, variables, rngs
        )
        return buffer, new_stats

    with _float64():
        kwargs = {"dtype": jnp.float64, "param_dtype": jnp.float64, **overrides}
        model = sj.create_model(
            "sparsenet-bc-22-6", block_impl="buffer", share_stats=True, **kwargs
        )
        variables = sj.init_variables(model, 0)
        x = _images(overrides, jnp.float64)

        def grads():
            loss = square_loss(model, variables, x)
            return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])

        got = grads()
        monkeypatch.setattr(block_module, "scan_layers", autodiff)
        chex.assert_trees_all_close(got, grads(), atol=1e-10, rtol=1e-10)


def test_slot_plan_pads_every_layer_to_one_width():
    """sparsenet-40-24's first block: x_0 is two slots; layer 8 reads 7, 6, 4 and x_0 (5 slots)."""
    plan = slot_plan(Schedule("sparse"), 12, 48, 24)
    assert (plan.x0_slots, plan.reads, plan.num_slots) == (2, 5, 15)
    assert plan.read_slots[0] == (1, 2, 0, 0, 0)  # layer 1 reads x_0, then the zero slot
    assert plan.read_slots[7] == (9, 8, 6, 1, 2)  # layer 8: x_7, x_6, x_4, x_0
    assert plan.runs[7] == ((0, 120),)
    assert plan.runs[2] == ((0, 48), (None, 72))  # layer 3: x_2, x_1, then zero channels
    # x_0 narrower than its slots: its padding sits where x_0 ends (dense reads it first)
    dense = slot_plan(Schedule("dense"), 3, 10, 4)
    assert dense.runs[1] == ((0, 10), (None, 2), (10, 14), (None, 4))
    for layer in range(1, 4):  # every layer's true rows, in order, then nothing else
        true_rows = [
            r
            for start, stop in dense.runs[layer - 1]
            if start is not None
            for r in range(start, stop)
        ]
        assert true_rows == list(range(10 + 4 * (layer - 1)))


@pytest.mark.parametrize("train", [False, True])
def test_one_unit_body_a_block(train):
    """sparsenet-40-24 traces one 3×3 convolution a block instead of one a layer."""
    x = jnp.ones((2, 32, 32, 3))

    def conv_count(model):
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
        mutable = ["batch_stats"] if train else False
        jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=train, mutable=mutable))(variables)
        return str(jaxpr).count("conv_general_dilated")

    plain = sj.create_model("sparsenet-40-24")
    assert conv_count(plain) == 1 + 3 * 12  # the stem, one a unit (1×1 transitions are dots)
    assert conv_count(plain.clone(block_impl="buffer")) == 1 + 3


def test_block_impl_is_checked():
    with pytest.raises(ValueError, match="block_impl must be one of"):
        sj.create_model("sparsenet-25-6", block_impl="buffers")
    with pytest.raises(ValueError, match="channel_bucket"):
        sj.create_model("sparsenet-25-6", block_impl="buffer", channel_bucket=128)


HLO = """HloModule m

%fused_add (p0: f32[8,128], p1: f32[8,128]) -> f32[8,128] {
  %p0 = f32[8,128]{1,0:T(8,128)} parameter(0)
  %p1 = f32[8,128]{1,0:T(8,128)} parameter(1)
  ROOT %add = f32[8,128]{1,0:T(8,128)} add(%p0, %p1)
}

%fused_slice (q0: bf16[2,24]) -> bf16[2,8] {
  %q0 = bf16[2,24]{1,0:T(8,128)(2,1)} parameter(0)
  ROOT %s = bf16[2,8]{1,0:T(8,128)(2,1)} slice(%q0), slice={[0:2], [0:8]}
}

%body (arg: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %arg = (s32[]{:T(128)}, f32[8,128]{1,0:T(8,128)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%arg), index=0
  %x = f32[8,128]{1,0:T(8,128)} get-tuple-element(%arg), index=1
  %f = f32[8,128]{1,0:T(8,128)} fusion(%x, %x), kind=kLoop, calls=%fused_add, backend_config={"estimated_cycles":"10"}
  ROOT %t = (s32[]{:T(128)}, f32[8,128]{1,0:T(8,128)}) tuple(%i, %f)
}

%cond (carg: (s32[], f32[8,128])) -> pred[] {
  %carg = (s32[]{:T(128)}, f32[8,128]{1,0:T(8,128)}) parameter(0)
  %c = s32[]{:T(128)} constant(3)
  %j = s32[]{:T(128)} get-tuple-element(%carg), index=0
  ROOT %lt = pred[]{:T(512)} compare(%j, %c), direction=LT
}

ENTRY %main (a: (s32[], f32[8,128]), b: bf16[2,24]) -> bf16[2,8] {
  %a = (s32[]{:T(128)}, f32[8,128]{1,0:T(8,128)}) parameter(0)
  %b = bf16[2,24]{1,0:T(8,128)(2,1)} parameter(1)
  %w = (s32[]{:T(128)}, f32[8,128]{1,0:T(8,128)}) while(%a), condition=%cond, body=%body
  ROOT %g = bf16[2,8]{1,0:T(8,128)(2,1)} fusion(%b), kind=kLoop, calls=%fused_slice, backend_config={"estimated_cycles":"5"}
}
"""


def test_tpu_shapes_counts_scan_loops_and_tiled_bytes():
    """benchmarks/tpu_shapes.py: a scan's loop runs as often as its condition says (the TPU
    compiler writes no trip count on it), and bytes are counted at the tiled layout's size."""
    import importlib
    import pathlib
    import sys

    bench = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    counts = importlib.import_module("tpu_shapes").hlo_counts(HLO)
    assert counts["uncounted_loops"] == 0
    assert counts["estimated_cycles"] == 3 * 10 + 5
    tile_f32 = 8 * 128 * 4  # f32[8,128]: one tile
    tile_bf16 = 8 * 128 * 2  # bf16[2,24] and bf16[2,8] pad to one (8, 128) tile
    add, sliced = 3 * tile_f32, 2 * tile_bf16  # the slice fusion reads only its slice
    assert counts["est_bytes"] == 3 * add + sliced
    assert counts["est_bytes_flat"] == add + sliced
