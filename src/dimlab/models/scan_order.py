"""Pure index maths for DiM's 2-D -> 1-D scans: padded grids, scan orders, the block schedule, skip pairs.

Everything here returns plain ``torch.long`` index tensors or Python lists and holds no parameters, so it can be
tested in isolation and precomputed once per grid (see ``dimlab.models.dim.DiM``).

Conventions (docs/backbone.md, "Forward pass" step 6 and "Scan orders and schedule"):

* The *padded grid* has ``height + pad`` rows and ``width + pad`` columns. Image token ``(i, j)`` sits at row
  ``i``, column ``j``; the last ``pad`` columns and the last ``pad`` rows hold pad tokens. Its *canonical*
  flattening is row-major, which is also the row-forward scan order.
* A *scan order* is a permutation ``order`` of the canonical positions: ``order[k]`` is the canonical position of
  the ``k``-th token visited by the scan. A sequence laid out in order ``a`` is moved to order ``b`` by gathering
  with :func:`relative_permutation` ``(a, b)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROW_FORWARD = "row_forward"
ROW_BACKWARD = "row_backward"
COL_FORWARD = "col_forward"
COL_BACKWARD = "col_backward"

#: The four scan patterns in the order the official schedule cycles through them (ids 0, -2, 1, -1 there).
PATTERN_CYCLE: tuple[str, ...] = (ROW_FORWARD, ROW_BACKWARD, COL_FORWARD, COL_BACKWARD)

#: Short names used in docs and in the schedule strings of the reference (``rf rb cf cb``).
PATTERN_ABBREVIATIONS = {ROW_FORWARD: "rf", ROW_BACKWARD: "rb", COL_FORWARD: "cf", COL_BACKWARD: "cb"}

PAD_FILLS = ("lateral", "rho_pad")

#: Index of the first block that takes part in the scan cycle and the skips (``encoder_start_blk_id``).
ENCODER_START = 1


@dataclass(frozen=True)
class PaddedGrid:
    """Geometry of an image grid with ``pad`` pad columns on the right and ``pad`` pad rows at the bottom.

    ``pad = 0`` describes the plain grid (the padding-token switch off).
    """

    height: int
    width: int
    pad: int = 0

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.pad < 0:
            raise ValueError(
                f"PaddedGrid needs height >= 1, width >= 1 and pad >= 0, got "
                f"height={self.height}, width={self.width}, pad={self.pad}"
            )

    @property
    def padded_height(self) -> int:
        """Rows of the padded grid."""
        return self.height + self.pad

    @property
    def padded_width(self) -> int:
        """Columns of the padded grid."""
        return self.width + self.pad

    @property
    def num_tokens(self) -> int:
        """Tokens in the padded grid (image plus pad tokens)."""
        return self.padded_height * self.padded_width

    @property
    def num_pad_tokens(self) -> int:
        """Pad slots in the padded grid."""
        return self.num_tokens - self.height * self.width

    def is_pad(self) -> torch.Tensor:
        """Bool mask over canonical (row-major) positions: True where a pad token sits."""
        rows = torch.arange(self.padded_height).unsqueeze(1)
        cols = torch.arange(self.padded_width).unsqueeze(0)
        return ((rows >= self.height) | (cols >= self.width)).flatten()

    def image_positions(self) -> torch.Tensor:
        """Canonical positions of the image tokens, in the image's own row-major order (length H*W)."""
        return torch.nonzero(~self.is_pad()).flatten()

    def pad_positions(self) -> torch.Tensor:
        """Canonical positions of the pad slots, in row-major order."""
        return torch.nonzero(self.is_pad()).flatten()

    def pad_token_ids(self, fill: str = "lateral") -> torch.Tensor:
        """Which of the ``pad`` learnable pad vectors fills each pad slot (aligned with :meth:`pad_positions`).

        ``"lateral"``: the right-hand pad columns hold ``p_0 .. p_{pad-1}`` in every row, and bottom pad row
        ``k`` is all ``p_k`` (corner included). ``"rho_pad"``: the pad slots, visited row-major, cycle
        ``p_0, p_1, .., p_{pad-1}, p_0, ..``. The right-hand columns therefore read the same as in "lateral"
        (each row has exactly ``pad`` of them), but the bottom rows hold a cycling pattern.
        """
        if self.pad == 0:
            return torch.zeros(0, dtype=torch.long)
        if fill == "lateral":
            rows = torch.arange(self.padded_height).unsqueeze(1).expand(-1, self.padded_width)
            cols = torch.arange(self.padded_width).unsqueeze(0).expand(self.padded_height, -1)
            ids = torch.where(rows >= self.height, rows - self.height, cols - self.width).flatten()
            return ids[self.is_pad()]
        if fill == "rho_pad":
            return torch.arange(self.num_pad_tokens) % self.pad
        raise ValueError(f"pad fill must be one of {PAD_FILLS}, got {fill!r}")

    def token_map(self, fill: str = "lateral") -> torch.Tensor:
        """(padded_height, padded_width) map: image index ``0..H*W-1``, and ``k - pad`` for pad vector ``p_k``.

        Pads are written as negative indices into the list of pad vectors (``-3, -2, -1`` = ``p_0, p_1, p_2``
        for ``pad = 3``): the 32x32 rho_pad grid's bottom rows start ``-3, -1, -2`` (docs/backbone.md).
        Meant for inspection and tests.
        """
        out = torch.empty(self.num_tokens, dtype=torch.long)
        out[self.image_positions()] = torch.arange(self.height * self.width)
        out[self.pad_positions()] = self.pad_token_ids(fill) - self.pad
        return out.view(self.padded_height, self.padded_width)


def scan_permutation(pattern: str, rows: int, cols: int) -> torch.Tensor:
    """Scan order ``pattern`` over a ``rows x cols`` grid as a permutation of its row-major positions.

    Row scans visit rows top to bottom, each left to right; column scans visit columns left to right, each top
    to bottom. The backward patterns are the exact reversal of their forward pattern, so pads lead each line.
    Works for rectangular grids.
    """
    canonical = torch.arange(rows * cols).view(rows, cols)
    if pattern == ROW_FORWARD:
        return canonical.flatten()
    if pattern == ROW_BACKWARD:
        return canonical.flatten().flip(0)
    if pattern == COL_FORWARD:
        return canonical.t().flatten()
    if pattern == COL_BACKWARD:
        return canonical.t().flatten().flip(0)
    raise ValueError(f"unknown scan pattern {pattern!r}; expected one of {PATTERN_CYCLE}")


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """Inverse of a permutation tensor: ``inv[order[k]] = k``."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), dtype=order.dtype)
    return inv


def relative_permutation(src_order: torch.Tensor, dst_order: torch.Tensor) -> torch.Tensor:
    """Gather index moving a sequence laid out in ``src_order`` into ``dst_order``.

    ``seq_dst = seq_src[:, index]``; both orders are permutations of the same canonical positions.
    """
    if src_order.shape != dst_order.shape:
        raise ValueError(f"orders differ in length: {tuple(src_order.shape)} vs {tuple(dst_order.shape)}")
    return inverse_permutation(src_order)[dst_order]


def _check_depth(depth: int) -> None:
    if depth < 1 or depth % 2 == 0:
        raise ValueError(
            f"DiM depth must be odd (one stem block plus mirrored halves; the reference asserts this), got {depth}"
        )


def mid_block(depth: int) -> int:
    """First block of the decoder half, ``M = start + (depth - start) / 2`` (25 for 49 blocks, 13 for 25)."""
    _check_depth(depth)
    return ENCODER_START + (depth - ENCODER_START) // 2


def block_schedule(depth: int, num_patterns: int = 4) -> list[str]:
    """Scan pattern of every block (docs/backbone.md, "Scan orders and schedule"), cycling through the first ``num_patterns`` patterns.

    Block 0 is row-forward; encoder block ``b < M`` uses pattern ``b mod K``; decoder block ``M + j`` uses the
    pattern of encoder block ``M - 2 - j``. That mirror makes every skip tensor arrive in the receiving block's
    incoming order, and it ends on row-forward.
    """
    _check_depth(depth)
    if not 1 <= num_patterns <= len(PATTERN_CYCLE):
        raise ValueError(f"num_patterns (multi_scan) must be in 1..{len(PATTERN_CYCLE)}, got {num_patterns}")
    m = mid_block(depth)
    ids = [(b if b < m else 2 * m - 2 - b) % num_patterns for b in range(depth)]
    assert ids[-1] == 0, "the mirrored schedule must end on row-forward"
    return [PATTERN_CYCLE[i] for i in ids]


def skip_pairs(depth: int) -> list[tuple[int, int]]:
    """Long-skip pairs ``(source_block, receiving_block)`` in receiving order: (M-1, M), (M-2, M+1), .., (1, N-1).

    Block 0 (the stem) takes part in neither side; there is no mid block.
    """
    m = mid_block(depth)
    return [(2 * m - 1 - r, r) for r in range(m, depth)]


def schedule_string(schedule: list[str]) -> str:
    """Compact ``"0 rf 1 rb ..."`` rendering of a schedule, as written in docs/backbone.md."""
    return " ".join(f"{b} {PATTERN_ABBREVIATIONS[p]}" for b, p in enumerate(schedule))


@dataclass(frozen=True)
class GridIndexPlan:
    """All index tensors one forward pass needs for one grid, built once and reused.

    ``assemble``: gather index over ``[cond tokens, separator tokens, image tokens (row-major), pad vectors]``
    that produces the block-0 sequence ``[cond, separators, padded grid in row-forward order]``.
    ``transitions[b]``: gather index moving the whole sequence from block ``b-1``'s order into block ``b``'s
    (``None`` where the order does not change; prefix tokens always stay in front); ``inverse_transitions[b]`` its
    inverse permutation (the gather index of the transition's backward).
    ``extract``: gather index picking the image tokens (row-major) out of the last block's sequence.
    """

    grid: PaddedGrid
    schedule: tuple[str, ...]
    prefix_len: int
    assemble: torch.Tensor
    transitions: tuple[torch.Tensor | None, ...]
    extract: torch.Tensor
    inverse_transitions: tuple[torch.Tensor | None, ...]

    @property
    def seq_len(self) -> int:
        """Length of the sequence the blocks see."""
        return self.prefix_len + self.grid.num_tokens

    def to(self, device: torch.device | str) -> GridIndexPlan:
        """The same plan with every index tensor on ``device``."""
        return GridIndexPlan(
            grid=self.grid,
            schedule=self.schedule,
            prefix_len=self.prefix_len,
            assemble=self.assemble.to(device),
            transitions=tuple(None if t is None else t.to(device) for t in self.transitions),
            extract=self.extract.to(device),
            inverse_transitions=tuple(None if t is None else t.to(device) for t in self.inverse_transitions),
        )


def build_grid_plan(
    grid: PaddedGrid, schedule: list[str], num_cond: int, num_separators: int, fill: str = "lateral"
) -> GridIndexPlan:
    """Index plan for ``grid`` under ``schedule`` with ``num_cond`` cond tokens and ``num_separators`` separators.

    The source of ``assemble`` is the concatenation ``[cond (num_cond), separators (num_separators),
    image tokens (H*W, row-major), pad vectors (grid.pad)]``.
    """
    if schedule[0] != ROW_FORWARD or schedule[-1] != ROW_FORWARD:
        raise ValueError(f"schedule must start and end row-forward, got {schedule[0]} .. {schedule[-1]}")
    prefix = num_cond + num_separators
    hw = grid.height * grid.width
    canonical_source = torch.empty(grid.num_tokens, dtype=torch.long)
    canonical_source[grid.image_positions()] = prefix + torch.arange(hw)
    canonical_source[grid.pad_positions()] = prefix + hw + grid.pad_token_ids(fill)
    assemble = torch.cat([torch.arange(prefix), canonical_source])

    orders = {p: scan_permutation(p, grid.padded_height, grid.padded_width) for p in set(schedule)}
    transitions: list[torch.Tensor | None] = [None]
    for prev, cur in zip(schedule[:-1], schedule[1:], strict=True):
        if prev == cur:
            transitions.append(None)
            continue
        rel = relative_permutation(orders[prev], orders[cur])
        transitions.append(torch.cat([torch.arange(prefix), prefix + rel]))
    extract = prefix + grid.image_positions()
    return GridIndexPlan(
        grid=grid,
        schedule=tuple(schedule),
        prefix_len=prefix,
        assemble=assemble,
        transitions=tuple(transitions),
        extract=extract,
        inverse_transitions=tuple(None if t is None else inverse_permutation(t) for t in transitions),
    )
