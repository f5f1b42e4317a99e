"""Scan orders, pad layouts, the block schedule and skip pairing (docs/backbone.md, "Forward pass")."""

from __future__ import annotations

import pytest
import torch

from dimlab.models.scan_order import (
    COL_BACKWARD,
    COL_FORWARD,
    PATTERN_ABBREVIATIONS,
    ROW_BACKWARD,
    ROW_FORWARD,
    PaddedGrid,
    block_schedule,
    build_grid_plan,
    inverse_permutation,
    mid_block,
    relative_permutation,
    scan_permutation,
    schedule_string,
    skip_pairs,
)


def _abbrev(schedule):
    return [PATTERN_ABBREVIATIONS[p] for p in schedule]


def test_schedule_49_matches_reference_trace():
    # The schedule of the released 49-block models, as traced from the official code (docs/backbone.md).
    trace = (
        "0 rf 1 rb 2 cf 3 cb 4 rf 5 rb 6 cf 7 cb 8 rf 9 rb 10 cf 11 cb 12 rf 13 rb 14 cf 15 cb 16 rf 17 rb 18 cf "
        "19 cb 20 rf 21 rb 22 cf 23 cb 24 rf 25 cb 26 cf 27 rb 28 rf 29 cb 30 cf 31 rb 32 rf 45 cb 46 cf 47 rb 48 rf"
    )
    listed = trace.split()
    expected = {int(b): p for b, p in zip(listed[::2], listed[1::2], strict=True)}
    got = _abbrev(block_schedule(49, 4))
    assert len(got) == 49
    assert {b: got[b] for b in expected} == expected


def test_schedule_25_matches_reference_trace():
    got = _abbrev(block_schedule(25, 4))
    assert got[:5] == ["rf", "rb", "cf", "cb", "rf"]
    assert got[12] == "rf"
    assert got[13:17] == ["cb", "cf", "rb", "rf"]
    assert got[24] == "rf"
    assert mid_block(25) == 13 and mid_block(49) == 25


@pytest.mark.parametrize("depth", [1, 3, 5, 7, 25, 49])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_schedule_mirror_property(depth, k):
    schedule = block_schedule(depth, k)
    assert schedule[0] == ROW_FORWARD and schedule[-1] == ROW_FORWARD
    assert set(schedule) <= set([ROW_FORWARD, ROW_BACKWARD, COL_FORWARD, COL_BACKWARD][:k])
    for src, dst in skip_pairs(depth):
        # the skip is stored in the source's order and is fused before the receiver permutes
        assert schedule[dst - 1] == schedule[src], (depth, k, src, dst)


def test_multi_scan_one_is_all_row_forward_and_two_alternates():
    assert set(block_schedule(25, 1)) == {ROW_FORWARD}
    two = _abbrev(block_schedule(9, 2))
    assert two == ["rf", "rb", "rf", "rb", "rf", "rb", "rf", "rb", "rf"]


@pytest.mark.parametrize("depth", [0, 2, 24, -1])
def test_even_depth_rejected(depth):
    with pytest.raises(ValueError, match="odd"):
        block_schedule(depth, 4)


def test_bad_pattern_count_rejected():
    with pytest.raises(ValueError, match="multi_scan"):
        block_schedule(25, 5)


def test_skip_pairs():
    pairs = skip_pairs(49)
    assert pairs[0] == (24, 25) and pairs[1] == (23, 26) and pairs[-1] == (1, 48)
    assert len(pairs) == 24
    assert skip_pairs(25)[0] == (12, 13) and skip_pairs(25)[-1] == (1, 24)
    assert all(0 not in pair for pair in pairs)


def test_scan_permutations_rectangular():
    assert scan_permutation(ROW_FORWARD, 2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert scan_permutation(ROW_BACKWARD, 2, 3).tolist() == [5, 4, 3, 2, 1, 0]
    assert scan_permutation(COL_FORWARD, 2, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert scan_permutation(COL_BACKWARD, 2, 3).tolist() == [5, 2, 4, 1, 3, 0]
    with pytest.raises(ValueError, match="unknown scan pattern"):
        scan_permutation("diagonal", 2, 3)


def test_relative_permutation_moves_between_orders():
    rows, cols = 4, 7
    canonical = torch.randn(rows * cols)
    for a in (ROW_FORWARD, ROW_BACKWARD, COL_FORWARD, COL_BACKWARD):
        for b in (ROW_FORWARD, ROW_BACKWARD, COL_FORWARD, COL_BACKWARD):
            oa, ob = scan_permutation(a, rows, cols), scan_permutation(b, rows, cols)
            moved = canonical[oa][relative_permutation(oa, ob)]
            assert torch.equal(moved, canonical[ob])
    order = scan_permutation(COL_BACKWARD, rows, cols)
    assert torch.equal(order[inverse_permutation(order)], torch.arange(rows * cols))


def test_lateral_layout_tiny_grid():
    # Right pad columns read p0 p1 p2 in every row; bottom pad row k is all p_k (pads written k - 3).
    grid = PaddedGrid(2, 2, 3)
    expected = [
        [0, 1, -3, -2, -1],
        [2, 3, -3, -2, -1],
        [-3, -3, -3, -3, -3],
        [-2, -2, -2, -2, -2],
        [-1, -1, -1, -1, -1],
    ]
    assert grid.token_map("lateral").tolist() == expected


def test_rho_pad_layout_tiny_grid():
    # Pad slots visited row-major cycle p0, p1, p2, p0, ...
    grid = PaddedGrid(2, 2, 3)
    expected = [
        [0, 1, -3, -2, -1],
        [2, 3, -3, -2, -1],
        [-3, -2, -1, -3, -2],
        [-1, -3, -2, -1, -3],
        [-2, -1, -3, -2, -1],
    ]
    assert grid.token_map("rho_pad").tolist() == expected


def test_rho_pad_32x32_bottom_rows_start_like_reference():
    token_map = PaddedGrid(32, 32, 3).token_map("rho_pad")
    assert token_map[32:, 0].tolist() == [-3, -1, -2]  # "the bottom rows start -3,-1,-2"
    assert (token_map[:32, 32:] == torch.tensor([-3, -2, -1])).all()  # right columns as in lateral
    lateral = PaddedGrid(32, 32, 3).token_map("lateral")
    assert torch.equal(lateral[:32], token_map[:32])
    assert not torch.equal(lateral[32:], token_map[32:])


def test_column_order_puts_pads_at_line_ends():
    grid = PaddedGrid(3, 4, 3)
    flat = grid.token_map("lateral").flatten()
    col_seq = flat[scan_permutation(COL_FORWARD, grid.padded_height, grid.padded_width)]
    columns = col_seq.view(grid.padded_width, grid.padded_height)
    assert (columns[:4, 3:] < 0).all() and (columns[:4, :3] >= 0).all()  # each image column ends with 3 pads
    assert (columns[4:] < 0).all()  # the last 3 columns are pad columns
    row_back = flat[scan_permutation(ROW_BACKWARD, grid.padded_height, grid.padded_width)]
    assert (row_back[: 3 * grid.padded_width] < 0).all()  # backward: the pad rows lead


def test_unknown_fill_and_bad_grid_rejected():
    with pytest.raises(ValueError, match="pad fill"):
        PaddedGrid(2, 2, 3).pad_token_ids("zigzag")
    with pytest.raises(ValueError, match="height"):
        PaddedGrid(0, 2, 3)


@pytest.mark.parametrize(
    ("rows", "cols", "pad", "num_sep", "k"), [(3, 5, 3, 3, 4), (4, 2, 0, 0, 4), (2, 3, 2, 2, 3)]
)
def test_grid_plan_position_ids(rows, cols, pad, num_sep, k):
    """Send position ids through the plan: prefix stays first, skips align, the image comes out in order."""
    depth = 9
    schedule = block_schedule(depth, k)
    grid = PaddedGrid(rows, cols, pad)
    plan = build_grid_plan(grid, schedule, num_cond=2, num_separators=num_sep, fill="lateral")
    prefix = 2 + num_sep
    source = torch.arange(prefix + rows * cols + pad)
    seq = source[plan.assemble]
    assert seq.numel() == plan.seq_len == prefix + grid.num_tokens
    assert torch.equal(seq[:prefix], torch.arange(prefix))
    outputs = []
    for b in range(depth):
        if plan.transitions[b] is not None:
            before = seq
            seq = seq[plan.transitions[b]]
            assert torch.equal(seq[plan.inverse_transitions[b]], before), "the inverse undoes the transition"
        else:
            assert plan.inverse_transitions[b] is None
        assert torch.equal(seq[:prefix], torch.arange(prefix))
        order = scan_permutation(schedule[b], grid.padded_height, grid.padded_width)
        assert torch.equal(seq[prefix:], source[plan.assemble][prefix:][order])
        outputs.append(seq.clone())
    for src, dst in skip_pairs(depth):
        assert torch.equal(outputs[src], outputs[dst - 1])
    assert torch.equal(seq[plan.extract], prefix + torch.arange(rows * cols))


def test_schedule_string():
    assert schedule_string(block_schedule(3, 4)) == "0 rf 1 rb 2 rf"
