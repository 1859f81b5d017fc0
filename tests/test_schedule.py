from __future__ import annotations

import collections

import pytest

from sparsenet_jax.model.schedule import Schedule, as_schedule

SPARSE = Schedule("sparse", 2)
DENSE = Schedule("dense")


def test_worked_example_base2_eight_layers():
    expected = {
        1: (0,),
        2: (1, 0),
        3: (2, 1),
        4: (3, 2, 0),
        5: (4, 3, 1),
        6: (5, 4, 2),
        7: (6, 5, 3),
        8: (7, 6, 4, 0),
    }
    for layer, reads in expected.items():
        assert SPARSE.inputs(layer) == reads
    assert SPARSE.block_output(8) == (8, 7, 5, 1)
    assert SPARSE.block_output(12) == (12, 11, 9, 5)
    assert SPARSE.block_output(16) == (16, 15, 13, 9, 1)


def test_dense_reads_everything_oldest_first():
    assert DENSE.inputs(1) == (0,)
    assert DENSE.inputs(5) == (0, 1, 2, 3, 4)
    assert DENSE.block_output(3) == (0, 1, 2, 3)


def test_base_three():
    base3 = Schedule("sparse", 3)
    assert base3.inputs(1) == (0,)
    assert base3.inputs(2) == (1,)
    assert base3.inputs(3) == (2, 0)
    assert base3.inputs(9) == (8, 6, 0)
    assert base3.inputs(10) == (9, 7, 1)
    assert base3.block_output(8) == (8, 6, 0)
    assert base3.block_output(7) == (7, 5)


@pytest.mark.parametrize("base", [2, 3, 4, 5])
def test_every_layer_reads_previous_and_log_many(base):
    schedule = Schedule("sparse", base)
    for layer in range(1, 300):
        reads = schedule.inputs(layer)
        assert reads[0] == layer - 1
        # floor(log_base(layer)) + 1, computed without floating point.
        count, power = 0, 1
        while power <= layer:
            count, power = count + 1, power * base
        assert len(reads) == count
        assert list(reads) == sorted(reads, reverse=True)  # newest first


@pytest.mark.parametrize("base", [2, 3])
def test_x0_read_only_by_powers_of_base(base):
    schedule = Schedule("sparse", base)
    readers = [layer for layer in range(1, 200) if 0 in schedule.inputs(layer)]
    powers = [base**j for j in range(10) if base**j < 200]
    assert readers == powers


def _shortest_paths_from(source: int, n: int, schedule: Schedule) -> dict[int, int]:
    edges = collections.defaultdict(list)
    for layer in range(1, n + 1):
        for i in schedule.inputs(layer):
            edges[i].append(layer)
    dist = {source: 0}
    queue = collections.deque([source])
    while queue:
        node = queue.popleft()
        for nxt in edges[node]:
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                queue.append(nxt)
    return dist


def test_shortest_path_is_popcount():
    n = 64
    for i in range(0, n):
        dist = _shortest_paths_from(i, n, SPARSE)
        for j in range(i + 1, n + 1):
            assert dist[j] == bin(j - i).count("1"), (i, j)


def test_widths():
    # tiny_sparsenet_bc_d46_k6: stem 12, growth 6, 7 layers.
    assert SPARSE.layer_input_widths(12, 6, 4) == (12, 18, 12, 24)
    assert SPARSE.output_width(12, 6, 7) == 30
    assert DENSE.layer_input_widths(12, 6, 3) == (12, 18, 24)
    assert DENSE.output_width(12, 6, 3) == 30


def test_hashable_and_cached():
    assert hash(Schedule("sparse", 2)) == hash(Schedule("sparse", 2))
    assert {Schedule("sparse", 2), Schedule("sparse", 2)} == {SPARSE}
    assert SPARSE.inputs(100) is Schedule("sparse", 2).inputs(100)  # lru_cache hit


@pytest.mark.parametrize("base", [1, 0, -3])
def test_base_below_two_is_rejected(base):
    with pytest.raises(ValueError, match="base must be >= 2"):
        Schedule("sparse", base)


def test_bad_kind_and_layer():
    with pytest.raises(ValueError, match="schedule kind"):
        Schedule("ring")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Schedule("sparse", 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="numbered from 1"):
        SPARSE.inputs(0)
    assert as_schedule("dense") == DENSE
    with pytest.raises(TypeError):
        as_schedule(3)  # type: ignore[arg-type]
