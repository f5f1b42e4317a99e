"""Triton kernels of the channel-last selective scan (Mamba-1 recurrence, real A, fp32 state).

Layout: every tensor is (batch, L, channels) with any strides; one program owns one batch row, a block of
``BE`` channels and one time segment. Each thread holds one channel and all N states of it as a tuple of N
``[BE]`` vectors (the n-loops are unrolled at compile time), so sums over n stay in registers and B_t / C_t
are loaded once per step for all channels of the program (16-byte tile loads, see :func:`_load_row`).

Recurrence (per channel e and state n), with dt = softplus(delta + bias) (mamba-ssm's threshold 20)::

    h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,   y_t = <C_t, h_t> + D u_t,   out_t = y_t silu(z_t)

The kernels take ``A2 = A * log2(e)`` transposed to (N, E), so a decay is one ``exp2``.

Forward (:func:`scan_fwd_kernel`) walks its segment step by step and, for training, stores the state entering
every ``T_SAVE``-th step (``states``, (B, L/T_SAVE, N, E) fp32). With ``STATE_ONLY`` it only returns the
segment's final state from a zero start and its summed dt (pass 1 of the split scan used when batch x channels
is too small to fill the GPU; :func:`scan_carry_kernel` then chains the segments).

Backward (:func:`scan_bwd_kernel`) walks the chunks of ``T_SAVE`` steps in reverse. For each it recomputes the
states at every ``T_SUB``-th step into a per-program scratch buffer (level 1), then for each sub-chunk, last
first, recomputes its ``T_SUB`` states into registers and runs the adjoint recurrence backwards over them
(level 2)::

    lam_t = C_t gy_t + exp(dt_{t+1} A) lam_{t+1},          gy = g * silu(z)
    d(dt_t A) = lam_t * exp(dt_t A) h_{t-1} = lam_t * (h_t - dt_t u_t B_t)

Sums over channels (dB, dC) are reduced across the warp with a reduce-scatter of lane shuffles
(:func:`_warp_reduce_scatter`; for N = 16 with bf16 B / C the lanes hold their states in an order that spares
most of its selects, :func:`_xor_layout`) and written as per-warp partials, summed afterwards (deterministic, no
atomics).
Sums over (batch, time) (dA, dD, d bias) are accumulated per program and written as partials too.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)  # constexprs, so that kernels may read them
LOG2E_K = tl.constexpr(LOG2E)


# ------------------------------------------------------------------------------------------------ helpers


@triton.jit
def _rcp(x, FAST: tl.constexpr):
    """1 / x: with ``FAST`` one MUFU.RCP (``rcp.approx.ftz``, within 1 ulp); else a division (the interpreter,
    which cannot run inline assembly). Triton's ``/`` is ``div.full``: nine instructions with its range checks."""
    if FAST:
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    return 1.0 / x


@triton.jit
def _lg2(x, FAST: tl.constexpr):
    """log2(x): with ``FAST`` one MUFU.LG2 (``lg2.approx.ftz``, absolute error below 2^-22); else ``tl.log2``,
    whose accurate polynomial is about 25 instructions."""
    if FAST:
        return tl.inline_asm_elementwise(
            "lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    return tl.log2(x)


@triton.jit
def _softplus_sigmoid(x, FAST: tl.constexpr):
    """(softplus(x), sigmoid(x)) as mamba-ssm computes them, threshold 20 (x itself and 1 above), one exponential.

    softplus = log1p(e) with e = exp(x). For e <= 1/4 (x <= -1.39, where Mamba's dt lives: 1e-3 .. 0.1) it is the
    series 2 atanh(s) = 2 (s + s^3 / 3 + s^5 / 5 + s^7 / 7), s = e / (2 + e) <= 1/9 (next term below 3e-9 of the
    sum): accurate in relative terms down to the smallest e, which log2(1 + e) with an absolute error is not.
    Above 1/4, log2(1 + e) ln 2. The sigmoid (the softplus' derivative) is e / (1 + e) from the same e.
    """
    e = tl.exp2(tl.minimum(x, 20.0) * LOG2E_K)
    one_e = 1.0 + e
    s = e * _rcp(2.0 + e, FAST)
    s2 = s * s
    small = s * (2.0 + s2 * (0.6666666666666666 + s2 * (0.4 + s2 * 0.2857142857142857)))
    log1p_e = tl.where(e <= 0.25, small, _lg2(one_e, FAST) * LN2)
    below = x <= 20.0
    return tl.where(below, log1p_e, x), tl.where(below, e * _rcp(one_e, FAST), 1.0)


@triton.jit
def _sigmoid(x, FAST: tl.constexpr):
    """1 / (1 + exp(-x)) with :func:`_rcp` (``tl.sigmoid`` divides with ``div.full``)."""
    return _rcp(1.0 + tl.exp2(-x * LOG2E_K), FAST)


@triton.jit
def _load_tiles(ptr, stride_n, e, mask, N: tl.constexpr, NV: tl.constexpr, nb=None, tx=None):
    """The N values ptr[(nb + n) * stride_n], as loaded: a tuple of N / NV raw tiles, [BE, NV] values or, for
    16-bit inputs with NV >= 2, [BE, NV / 2] 32-bit words of two values (uint32 for bf16, int32 for fp16).

    Every lane reads a whole tile (one 16-byte load for NV = 8 bf16 values); :func:`_unpack_tiles` picks the
    columns. Kept apart so that a pipelined loop can hold a step's loads packed (NV / 2 registers per bf16 tile)
    until it uses them: held as words, which the compiler keeps in the registers they were loaded into (held as
    16-bit values, it moves each into a register of its own, two instructions per value and step). ``nb`` (a
    [BE] vector, or None for 0) offsets each lane's first column: the backward with two lanes per channel gives
    each lane its half of the states. ``tx`` (a [BE] vector of 0 / 1, words only) makes a lane read its tiles
    in the order g ^ tx (:func:`_xor_layout`). NV >= 2 implies stride_n == 1 (the launchers' ``_row_vector_width``).
    """
    elt: tl.constexpr = ptr.dtype.element_ty
    WORDS: tl.constexpr = NV >= 2 and elt.primitive_bitwidth == 16
    if WORDS:
        NW: tl.constexpr = NV // 2
        wptr = ptr.to(tl.pointer_type(tl.uint32 if elt == tl.bfloat16 else tl.int32), bitcast=True)
        wcols = tl.arange(0, NW)
    cols = tl.arange(0, NV)
    out = ()
    for g in tl.static_range(N // NV):
        if WORDS:
            if tx is not None:
                offsets = (g ^ tx)[:, None] * NW + wcols[None, :]
            elif nb is None:
                offsets = g * NW + wcols[None, :] + 0 * e[:, None]
            else:
                offsets = nb[:, None] // 2 + g * NW + wcols[None, :]
            out = out + (tl.load(wptr + offsets, mask=mask, other=0),)
        else:
            if nb is None:
                offsets = (g * NV + cols[None, :]) * stride_n + 0 * e[:, None]
            else:
                offsets = (nb[:, None] + g * NV + cols[None, :]) * stride_n
            out = out + (tl.load(ptr + offsets, mask=mask, other=0.0),)
    return out


@triton.jit
def _unpack_tiles(tiles, N: tl.constexpr, NV: tl.constexpr, lx=None, ASM: tl.constexpr = 0):
    """The tiles of :func:`_load_tiles` as a tuple of N fp32 [BE] vectors.

    The column is picked in registers on the raw bits (an integer add of zeros folds away, a float add of +0.0
    would not) and widened to fp32 afterwards: a bf16 word's low value is word << 16, its high one the word with
    the low half cleared (one instruction each). With a lane layout ``lx`` (:func:`_xor_layout`, bf16 words) the
    lanes that hold their states in swapped pairs take the halves the other way round: with ``ASM`` one ``prmt``
    each, whose byte selector is per lane, else a select.
    """
    out = ()
    for g in tl.static_range(N // NV):
        tile = tiles[g]
        if tile.dtype == tl.uint32 or tile.dtype == tl.int32:  # words: two 16-bit values each
            wcols = tl.arange(0, NV // 2)
            for w in tl.static_range(NV // 2):
                word = tl.sum(tl.where(wcols[None, :] == w, tile, 0), axis=1)
                if tile.dtype == tl.uint32 and lx is not None and ASM:
                    zero = word * 0
                    out = out + (_prmt(word, zero, lx[2]).to(tl.float32, bitcast=True),)
                    out = out + (_prmt(word, zero, lx[3]).to(tl.float32, bitcast=True),)
                elif tile.dtype == tl.uint32:
                    lo = (word << 16).to(tl.float32, bitcast=True)
                    hi = ((word >> 16) << 16).to(tl.float32, bitcast=True)
                    if lx is None:
                        out = out + (lo, hi)
                    else:
                        out = out + (tl.where(lx[1], hi, lo), tl.where(lx[1], lo, hi))
                else:
                    out = out + (word.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32),)
                    out = out + ((word >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32),)
        else:
            cols = tl.arange(0, NV)
            if tile.dtype == tl.float32:
                bits = tile.to(tl.int32, bitcast=True)
            else:
                bits = tile.to(tl.int16, bitcast=True)
            for j in tl.static_range(NV):
                v = tl.sum(tl.where(cols[None, :] == j, bits, 0), axis=1)
                if tile.dtype == tl.float32:
                    val = v.to(tl.float32, bitcast=True)
                elif tile.dtype == tl.bfloat16:
                    val = (v << 16).to(tl.float32, bitcast=True)
                else:
                    val = v.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
                out = out + (val,)
    return out


@triton.jit
def _prmt(word, zero, sel):
    """PTX ``prmt.b32``: the four bytes that the per-lane selector ``sel`` picks from (zero, word); here a bf16
    half moved to the top of an fp32 (0x1044: the low half, 0x3244: the high one) in one instruction."""
    return tl.inline_asm_elementwise(
        "prmt.b32 $0, $1, $2, $3;", "=r,r,r,r", [word, zero, sel], dtype=tl.uint32, is_pure=True, pack=1
    )


@triton.jit
def _xor_layout(lane):
    """The state order of one lane per channel, N = 16, bf16 B / C: slot s of every per-state tuple holds state
    s ^ m(lane), m = 8 * (lane bit 4) + (lane bit 3).

    Sums over the states do not care about the order; what it buys is the dB / dC reduce-scatter
    (:func:`_reduce_scatter_xor16`): at its two widest levels (lane bits 4 and 3, splitting on state bits 3 and
    0) every lane keeps its even slots and sends the others, with no select (the plain butterfly needs two per
    shuffle, 60 per step). The cost is paid where states meet memory, and is nil in the loop: a lane reads its two
    B / C tiles in the order g ^ (bit 4) (per-lane addresses), takes each bf16 word's halves swapped when bit 3
    is set (a per-lane ``prmt`` selector), and reads / writes the rows of the (N, E) state slabs as n ^ m.
    Returns (tile xor, swapped, even-slot selector, odd-slot selector, m).
    """
    b4 = (lane >> 4) & 1
    swapped = ((lane >> 3) & 1) != 0
    even = tl.where(swapped, 0x3244, 0x1044).to(tl.uint32)
    odd = tl.where(swapped, 0x1044, 0x3244).to(tl.uint32)
    return b4, swapped, even, odd, b4 * 8 + ((lane >> 3) & 1)


@triton.jit
def _load_row(ptr, stride_n, e, mask, N: tl.constexpr, NV: tl.constexpr, nb=None):
    """The N values ptr[(nb + n) * stride_n] as a tuple of N fp32 [BE] vectors (:func:`_load_tiles`)."""
    return _unpack_tiles(_load_tiles(ptr, stride_n, e, mask, N, NV, nb), N, NV)


@triton.jit
def _dot_n(a, b, init, N: tl.constexpr):
    """init + sum_n a[n] * b[n] over two tuples of N [BE] vectors, as four interleaved FMA chains.

    One chain would make every product wait for the previous one (N x the FMA latency per step); four
    chains cost three adds more and cut the dependent length to about N / 4 + 2.
    """
    acc = ()
    for c in tl.static_range(4):
        chain = init if c == 0 else tl.zeros_like(init)
        for n in tl.static_range(c, N, 4):
            chain += a[n] * b[n]
        acc = acc + (chain,)
    return (acc[0] + acc[1]) + (acc[2] + acc[3])


@triton.jit
def _prefetch(ptr, LEVEL: tl.constexpr):
    """Ask for the cache line of every address of ``ptr`` ahead of its load: into L1 (``LEVEL`` 1) or L2 (2).

    A hint (PTX ``prefetch``) that keeps no register, so a step's loads can be requested several steps early
    without the register cost of loading them early. Triton has no prefetch op, hence the inline assembly;
    the interpreter cannot run it, so the launchers pass ``LEVEL`` 0 there (addresses computed, nothing issued).
    """
    if LEVEL == 1:
        tl.inline_asm_elementwise(
            "prefetch.global.L1 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptr], dtype=tl.int32, is_pure=False, pack=1
        )
    elif LEVEL == 2:
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptr], dtype=tl.int32, is_pure=False, pack=1
        )


@triton.jit
def _prefetch_step(t, lo, hi, base0, s0, base1, s1, base2, s2, base3, s3, row0, r0, row1, r1,
                   NR: tl.constexpr, LEVEL: tl.constexpr):  # fmt: skip
    """Prefetch step t (clamped into [lo, hi - 1]) of up to four per-lane streams (``base*`` None: skipped)
    and ``NR`` B / C rows (one line each, same address in every lane)."""
    t = tl.minimum(tl.maximum(t, lo), hi - 1)
    if base0 is not None:
        _prefetch(base0 + t * s0, LEVEL)
    if base1 is not None:
        _prefetch(base1 + t * s1, LEVEL)
    if base2 is not None:
        _prefetch(base2 + t * s2, LEVEL)
    if base3 is not None:
        _prefetch(base3 + t * s3, LEVEL)
    if NR >= 1:
        _prefetch(row0 + t * r0, LEVEL)
    if NR >= 2:
        _prefetch(row1 + t * r1, LEVEL)


@triton.jit
def _load_vec(ptr, mask):
    """A [BE] vector as fp32."""
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _zeros_tuple(BE: tl.constexpr, N: tl.constexpr):
    """A tuple of N zero fp32 [BE] vectors (also the conv kernels' empty window)."""
    out = ()
    for _n in tl.static_range(N):
        out = out + (tl.zeros([BE], tl.float32),)
    return out


@triton.jit
def _load_state(ptr, E, e, mask, N: tl.constexpr, nb=0, perm=None):
    """Tuple of N fp32 [BE] vectors from an (N, E) slab: rows nb .. nb + N - 1 (``nb``: 0 or per lane), or with
    ``perm`` (per lane) rows n ^ perm (:func:`_xor_layout`)."""
    out = ()
    for n in tl.static_range(N):
        row = (n ^ perm) if perm is not None else nb + n
        out = out + (tl.load(ptr + row * E + e, mask=mask, other=0.0),)
    return out


@triton.jit
def _store_state(ptr, E, e, mask, h, N: tl.constexpr, nb=0, perm=None):
    """Store a tuple of N [BE] vectors to rows nb .. nb + N - 1 (or n ^ perm) of an (N, E) slab."""
    for n in tl.static_range(N):
        row = (n ^ perm) if perm is not None else nb + n
        tl.store(ptr + row * E + e, h[n], mask=mask)


@triton.jit
def _step_dt(dr, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """(dt, d dt / d delta): softplus(delta + bias) and its sigmoid, or delta + bias and 1."""
    if HAS_BIAS:
        dr = dr + bias
    if SOFTPLUS:
        return _softplus_sigmoid(dr, FAST)
    return dr, tl.zeros_like(dr) + 1.0


@triton.jit
def _advance(h, a2, dt, dtu, brow, N: tl.constexpr):
    """One step of the recurrence for a tuple of N states: exp2(dt * A2) h + dt u B."""
    hn = ()
    for n in tl.static_range(N):
        hn = hn + (tl.exp2(dt * a2[n]) * h[n] + dtu * brow[n],)
    return hn


@triton.jit
def _warp_reduce_scatter(vals, lane, P: tl.constexpr, LEVELS: tl.constexpr):
    """Sum each of P [32] vectors over lanes, with P/2 + P/4 + ... shuffles rather than LEVELS x P.

    ``vals`` holds P (a power of two) vectors of one value per lane. The sum runs over the lanes that differ in
    the top ``LEVELS`` of the 5 lane bits (5: the whole warp; 4: lanes of the same parity, for two lanes per
    channel). At each butterfly level the tuple is halved while it has more than one entry: a lane keeps the
    half its lane bit selects and adds the partner lane's copy of it; once one entry is left, partners just add.
    The result is a tuple of max(1, P >> LEVELS) vectors; lane l's entry i is the total of vals[i + base(l)]
    (:func:`_reduce_scatter_index`), and lanes that differ only in the bits of the add-only levels hold the
    same totals.
    """
    x = vals
    for level in tl.static_range(LEVELS):
        partner = lane ^ (16 >> level)
        if (P >> level) > 1:
            upper = (lane & (16 >> level)) != 0
            nxt = ()
            for i in tl.static_range(P >> (level + 1)):
                send = tl.where(upper, x[i], x[i + (P >> (level + 1))])
                keep = tl.where(upper, x[i + (P >> (level + 1))], x[i])
                nxt = nxt + (keep + tl.gather(send, partner, 0),)
            x = nxt
        else:
            x = (x[0] + tl.gather(x[0], partner, 0),)
    return x


@triton.jit
def _reduce_scatter_index(lane, P: tl.constexpr, LEVELS: tl.constexpr):
    """For :func:`_warp_reduce_scatter`: base(l), the index of lane l's first total."""
    base = lane * 0
    for level in tl.static_range(LEVELS):
        if (P >> level) > 1:
            base = base + tl.where((lane & (16 >> level)) != 0, P >> (level + 1), 0)
    return base


@triton.jit
def _reduce_scatter_xor16(vals, lane):
    """The sums over the warp of 16 per-lane vectors held in :func:`_xor_layout`'s order: 16 shuffles, 6 selects.

    Levels: lane bit 4 / state bit 3 and lane bit 3 / state bit 0 keep the even slots (the layout makes the
    partner's odd slot the same state as one's own even slot), lane bits 2 and 1 / state bits 2 and 1 select as
    the plain butterfly, lane bit 0 adds. Lane l ends with the total of state :func:`_xor16_state` (l).
    """
    x = ()
    for i in tl.static_range(8):
        x = x + (vals[i] + tl.gather(vals[i + 8], lane ^ 16, 0),)
    y = ()
    for j in tl.static_range(4):
        y = y + (x[2 * j] + tl.gather(x[2 * j + 1], lane ^ 8, 0),)
    upper = (lane & 4) != 0
    w = ()
    for j in tl.static_range(2):
        send = tl.where(upper, y[j], y[j + 2])
        keep = tl.where(upper, y[j + 2], y[j])
        w = w + (keep + tl.gather(send, lane ^ 4, 0),)
    upper = (lane & 2) != 0
    send = tl.where(upper, w[0], w[1])
    v = tl.where(upper, w[1], w[0]) + tl.gather(send, lane ^ 2, 0)
    return v + tl.gather(v, lane ^ 1, 0)


@triton.jit
def _xor16_state(lane):
    """The state whose total lane l holds after :func:`_reduce_scatter_xor16`: 8 l4 + 4 l2 + 2 l1 + l3."""
    return ((lane >> 4) & 1) * 8 + (lane & 6) + ((lane >> 3) & 1)


@triton.jit
def _store_lane_sums(ptr, vals, lane, valid, nb, N: tl.constexpr, P: tl.constexpr, K: tl.constexpr,
                     DUP: tl.constexpr, LEVELS: tl.constexpr, lx=None):  # fmt: skip
    """Reduce N per-lane vectors over the lanes of :func:`_warp_reduce_scatter` and store total n at
    ptr[nb + n], one lane each (``nb``: the lane's first state, 0 or its half's).

    P: N rounded up to a power of two; K = max(1, P >> LEVELS) totals per lane; DUP: the lane bits of the
    add-only levels, over which totals repeat. With a lane layout ``lx``: :func:`_reduce_scatter_xor16`.
    """
    if lx is not None:
        tl.store(ptr + _xor16_state(lane), _reduce_scatter_xor16(vals, lane), mask=valid & ((lane & 1) == 0))
    else:
        padded = vals
        for _i in tl.static_range(P - N):
            padded = padded + (vals[0] * 0.0,)
        sums = _warp_reduce_scatter(padded, lane, P, LEVELS)
        base = _reduce_scatter_index(lane, P, LEVELS)
        first = (lane & DUP) == 0
        for i in tl.static_range(K):
            n = base + i
            tl.store(ptr + nb + n, sums[i], mask=valid & first & (n < N))


@triton.jit
def _pair_sum(x, lane, LPC: tl.constexpr):
    """Sum of x over the LPC (1 or 2) lanes that share a channel."""
    if LPC == 2:
        return x + tl.gather(x, lane ^ 1, 0)
    return x


# ------------------------------------------------------------------------------------------------ forward


@triton.jit
def _fwd_step_loads(t, u_base, dl_base, z_base, b_base, c_base, s_ut, s_dt, s_zt, s_bt, s_bn, s_ct, s_cn, e, emask,
                    N: tl.constexpr, NV: tl.constexpr, HAS_Z: tl.constexpr, STATE_ONLY: tl.constexpr,
                    ROWS: tl.constexpr = True):  # fmt: skip
    """The forward's inputs at step t, as loaded (not widened): (u, delta, z, B tiles, C tiles).

    z and C are not loaded (zeros, an empty tuple) when the step does not use them; B and C neither when
    ``ROWS`` is false.
    """
    u = tl.load(u_base + t * s_ut, mask=emask, other=0.0)
    dl = tl.load(dl_base + t * s_dt, mask=emask, other=0.0)
    zz = u
    if HAS_Z and not STATE_ONLY:
        zz = tl.load(z_base + t * s_zt, mask=emask, other=0.0)
    rows = ((), ())
    if ROWS:
        rows = _fwd_rows(t, b_base, c_base, s_bt, s_bn, s_ct, s_cn, e, emask, N, NV, STATE_ONLY)
    return u, dl, zz, rows[0], rows[1]


@triton.jit
def _fwd_rows(t, b_base, c_base, s_bt, s_bn, s_ct, s_cn, e, emask, N: tl.constexpr, NV: tl.constexpr,
              STATE_ONLY: tl.constexpr):  # fmt: skip
    """The B and C tiles of step t (C: an empty tuple when the step does not use it)."""
    btiles = _load_tiles(b_base + t * s_bt, s_bn, e, emask[:, None], N, NV)
    ctiles = ()
    if not STATE_ONLY:
        ctiles = _load_tiles(c_base + t * s_ct, s_cn, e, emask[:, None], N, NV)
    return btiles, ctiles


@triton.jit
def scan_fwd_kernel(
    u_ptr, dl_ptr, a2_ptr, b_ptr, c_ptr, d_ptr, z_ptr, bias_ptr, out_ptr,
    hinit_ptr, states_ptr, hfin_ptr, dtsum_ptr,
    L, E, seg_len, n_chunks,
    s_ub, s_ut, s_ue, s_db, s_dt, s_de, s_bb, s_bt, s_bn, s_cb, s_ct, s_cn, s_zb, s_zt, s_ze, s_ob, s_ot,
    N: tl.constexpr, BE: tl.constexpr, NV: tl.constexpr, T_SAVE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr, SAVE: tl.constexpr, STATE_ONLY: tl.constexpr, PF: tl.constexpr, PF_LEVEL: tl.constexpr,
    PIPE: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    """One (batch row, channel block, segment): the scan over the segment (see the module docstring).

    With ``PF`` > 0 the inputs of step t + PF are prefetched (into L1 or L2, ``PF_LEVEL``) while step t runs:
    a step's loads otherwise wait a full memory latency, since the recurrence keeps few warps busy per SM.
    With ``PIPE`` 1 the loads of step t + 1 are issued into registers before step t computes (a warp issues in
    order, so otherwise it waits on each step's loads before it can ask for the next step's); they are held
    packed, at the cost of about 5 + N / 2 registers for bf16 inputs. ``PIPE`` 2 does so for u, delta and z
    only (3 registers) and loads the B / C rows when they are used.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_seg = tl.num_programs(2)
    e = pid_e * BE + tl.arange(0, BE)
    emask = e < E
    a2 = _load_state(a2_ptr, E, e, emask, N)
    seg_slab = (pid_b * n_seg + pid_s) * N * E
    if HAS_INIT:
        h = _load_state(hinit_ptr + seg_slab, E, e, emask, N)
    else:
        h = _zeros_tuple(BE, N)
    bias = tl.load(bias_ptr + e, mask=emask, other=0.0) if HAS_BIAS else 0.0
    d = tl.load(d_ptr + e, mask=emask, other=0.0) if HAS_D else 0.0
    u_base = u_ptr + pid_b * s_ub + e * s_ue
    dl_base = dl_ptr + pid_b * s_db + e * s_de
    z_base = z_ptr + pid_b * s_zb + e * s_ze
    o_base = out_ptr + pid_b * s_ob + e
    b_base = b_ptr + pid_b * s_bb
    c_base = c_ptr + pid_b * s_cb
    t_lo = pid_s * seg_len
    t_hi = tl.minimum(t_lo + seg_len, L)
    if PF > 0:
        ec = tl.minimum(e, E - 1)  # prefetch addresses stay inside the tensors
        pf_u = u_ptr + pid_b * s_ub + ec * s_ue
        pf_d = dl_ptr + pid_b * s_db + ec * s_de
        pf_z = z_ptr + pid_b * s_zb + ec * s_ze if HAS_Z and not STATE_ONLY else None
        pf_b = b_base + 0 * ec
        pf_c = c_base + 0 * ec
        for pk in tl.static_range(PF):
            _prefetch_step(t_lo + pk, t_lo, t_hi, pf_u, s_ut, pf_d, s_dt, pf_z, s_zt, None, 0,
                           pf_b, s_bt, pf_c, s_ct, 1 if STATE_ONLY else 2, PF_LEVEL)  # fmt: skip
    dsum = tl.zeros([BE], tl.float32)
    if PIPE > 0:
        nxt = _fwd_step_loads(t_lo, u_base, dl_base, z_base, b_base, c_base, s_ut, s_dt, s_zt, s_bt, s_bn, s_ct,
                              s_cn, e, emask, N, NV, HAS_Z, STATE_ONLY, PIPE == 1)  # fmt: skip
    for t in range(t_lo, t_hi):
        if PF > 0:
            _prefetch_step(t + PF, t_lo, t_hi, pf_u, s_ut, pf_d, s_dt, pf_z, s_zt, None, 0,
                           pf_b, s_bt, pf_c, s_ct, 1 if STATE_ONLY else 2, PF_LEVEL)  # fmt: skip
        if SAVE:  # noqa: SIM102 - a constexpr test around a run-time one
            if t % T_SAVE == 0:
                _store_state(states_ptr + (pid_b * n_chunks + t // T_SAVE) * N * E, E, e, emask, h, N)
        if PIPE > 0:
            cur = nxt
            nxt = _fwd_step_loads(tl.minimum(t + 1, t_hi - 1), u_base, dl_base, z_base, b_base, c_base, s_ut,
                                  s_dt, s_zt, s_bt, s_bn, s_ct, s_cn, e, emask, N, NV, HAS_Z, STATE_ONLY,
                                  PIPE == 1)  # fmt: skip
            if PIPE == 2:  # the B / C rows (shared by every program of the batch row) loaded when used
                rows = _fwd_rows(t, b_base, c_base, s_bt, s_bn, s_ct, s_cn, e, emask, N, NV, STATE_ONLY)
                cur = (cur[0], cur[1], cur[2], rows[0], rows[1])
        else:
            cur = _fwd_step_loads(t, u_base, dl_base, z_base, b_base, c_base, s_ut, s_dt, s_zt, s_bt, s_bn, s_ct,
                                  s_cn, e, emask, N, NV, HAS_Z, STATE_ONLY)  # fmt: skip
        u = cur[0].to(tl.float32)
        dt, _dg = _step_dt(cur[1].to(tl.float32), bias, HAS_BIAS, SOFTPLUS, FAST)
        brow = _unpack_tiles(cur[3], N, NV)
        dtu = dt * u
        hn = _advance(h, a2, dt, dtu, brow, N)
        if STATE_ONLY:
            dsum += dt
        else:
            y = _dot_n(hn, _unpack_tiles(cur[4], N, NV), d * u, N)
            if HAS_Z:
                zz = cur[2].to(tl.float32)
                y = y * zz * _sigmoid(zz, FAST)
            tl.store(o_base + t * s_ot, y.to(out_ptr.dtype.element_ty), mask=emask)
        h = hn
    if STATE_ONLY:
        _store_state(hfin_ptr + seg_slab, E, e, emask, h, N)
        tl.store(dtsum_ptr + (pid_b * n_seg + pid_s) * E + e, dsum, mask=emask)


@triton.jit
def scan_carry_kernel(
    local_ptr, dtsum_ptr, a2_ptr, init_ptr, E, n_seg,
    N: tl.constexpr, BE: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    """Chain the segments of a split scan: init[s] = decay(s') * init[s'] + local[s'] over s' before s.

    Forward (``REVERSE`` False): s' = s - 1, the state entering segment s. Reverse: s' = s + 1, the adjoint
    entering segment s from the right. decay(s') = exp(A * sum of dt over s'). (B, S, N, E) slabs.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    emask = e < E
    a2 = _load_state(a2_ptr, E, e, emask, N)
    h = _zeros_tuple(BE, N)
    for i in range(n_seg):
        s = n_seg - 1 - i if REVERSE else i
        slab = (pid_b * n_seg + s) * N * E
        _store_state(init_ptr + slab, E, e, emask, h, N)
        dsum = tl.load(dtsum_ptr + (pid_b * n_seg + s) * E + e, mask=emask, other=0.0)
        loc = _load_state(local_ptr + slab, E, e, emask, N)
        hn = ()
        for n in tl.static_range(N):
            hn = hn + (tl.exp2(dsum * a2[n]) * h[n] + loc[n],)
        h = hn


# ------------------------------------------------------------------------------------------------ backward


@triton.jit
def scan_bwd_lambda_kernel(
    dl_ptr, a2_ptr, c_ptr, z_ptr, bias_ptr, g_ptr, mu_ptr, dtsum_ptr,
    L, E, seg_len,
    s_db, s_dt, s_de, s_cb, s_ct, s_cn, s_zb, s_zt, s_ze, s_gb, s_gt, s_ge,
    N: tl.constexpr, BE: tl.constexpr, NV: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, PF: tl.constexpr, PF_LEVEL: tl.constexpr,
    FAST: tl.constexpr,
):  # fmt: skip
    """Pass 1 of a split backward: the adjoint a segment sends to its left neighbour from a zero start.

    mu = exp(dt_{t0} A) lam_{t0} with lam run backwards over the segment from lam = 0 at its end; also the
    segment's summed dt (for its decay). (B, S, N, E) and (B, S, E).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_seg = tl.num_programs(2)
    e = pid_e * BE + tl.arange(0, BE)
    emask = e < E
    a2 = _load_state(a2_ptr, E, e, emask, N)
    bias = tl.load(bias_ptr + e, mask=emask, other=0.0) if HAS_BIAS else 0.0
    dl_base = dl_ptr + pid_b * s_db + e * s_de
    z_base = z_ptr + pid_b * s_zb + e * s_ze
    g_base = g_ptr + pid_b * s_gb + e * s_ge
    c_base = c_ptr + pid_b * s_cb
    t_lo = pid_s * seg_len
    t_hi = tl.minimum(t_lo + seg_len, L)
    if PF > 0:
        ec = tl.minimum(e, E - 1)
        pf_d = dl_ptr + pid_b * s_db + ec * s_de
        pf_z = z_ptr + pid_b * s_zb + ec * s_ze if HAS_Z else None
        pf_g = g_ptr + pid_b * s_gb + ec * s_ge
        pf_c = c_base + 0 * ec
        for pk in tl.static_range(PF):
            _prefetch_step(t_hi - 1 - pk, t_lo, t_hi, pf_d, s_dt, pf_z, s_zt, pf_g, s_gt, None, 0,
                           pf_c, s_ct, None, 0, 1, PF_LEVEL)  # fmt: skip
    lam = _zeros_tuple(BE, N)
    dsum = tl.zeros([BE], tl.float32)
    for i in range(t_hi - t_lo):
        t = t_hi - 1 - i
        if PF > 0:
            _prefetch_step(t - PF, t_lo, t_hi, pf_d, s_dt, pf_z, s_zt, pf_g, s_gt, None, 0,
                           pf_c, s_ct, None, 0, 1, PF_LEVEL)  # fmt: skip
        dt, _dg = _step_dt(_load_vec(dl_base + t * s_dt, emask), bias, HAS_BIAS, SOFTPLUS, FAST)
        gy = _load_vec(g_base + t * s_gt, emask)
        if HAS_Z:
            zz = _load_vec(z_base + t * s_zt, emask)
            gy = gy * zz * _sigmoid(zz, FAST)
        crow = _load_row(c_base + t * s_ct, s_cn, e, emask[:, None], N, NV)
        ln = ()
        for n in tl.static_range(N):
            ln = ln + (tl.exp2(dt * a2[n]) * (lam[n] + crow[n] * gy),)
        lam = ln
        dsum += dt
    slab = (pid_b * n_seg + pid_s) * N * E
    _store_state(mu_ptr + slab, E, e, emask, lam, N)
    tl.store(dtsum_ptr + (pid_b * n_seg + pid_s) * E + e, dsum, mask=emask)


@triton.jit
def _row(ptr, stride_n, e, mask, NH: tl.constexpr, NV: tl.constexpr, nb, LPC: tl.constexpr, lx,
         ASM: tl.constexpr):  # fmt: skip
    """This lane's NH values of a B / C row: all of them with one lane per channel (in the order of the lane
    layout ``lx``, or None), its half with two."""
    return _unpack_tiles(_tiles(ptr, stride_n, e, mask, NH, NV, nb, LPC, lx), NH, NV, lx, ASM)


@triton.jit
def _tiles(ptr, stride_n, e, mask, NH: tl.constexpr, NV: tl.constexpr, nb, LPC: tl.constexpr, lx):
    """:func:`_row`, as loaded (:func:`_load_tiles`): unpack with :func:`_unpack_tiles` (NH, NV, lx)."""
    if LPC == 2:
        return _load_tiles(ptr, stride_n, e, mask, NH, NV, nb)
    if lx is not None:
        return _load_tiles(ptr, stride_n, e, mask, NH, NV, None, lx[0])
    return _load_tiles(ptr, stride_n, e, mask, NH, NV)


@triton.jit
def _recompute_loads(u_ptr, dl_ptr, b_ptr, s_bn, e, valid, nb, NH: tl.constexpr, NV: tl.constexpr,
                     LPC: tl.constexpr, lx):  # fmt: skip
    """The inputs of one recompute step (pointers at that step), as loaded: (u, delta, B tiles)."""
    u = tl.load(u_ptr, mask=valid, other=0.0)
    dl = tl.load(dl_ptr, mask=valid, other=0.0)
    return u, dl, _tiles(b_ptr, s_bn, e, valid[:, None], NH, NV, nb, LPC, lx)


@triton.jit
def _recompute_from(h, a2, bias, loads, valid, NH: tl.constexpr, NV: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, FAST: tl.constexpr, lx, ASM: tl.constexpr):  # fmt: skip
    """One step of the backward's forward recompute from :func:`_recompute_loads`: (new state, u, dt, d dt /
    d delta). Steps past the chunk (``valid`` false) get dt = 0, which leaves the state as it is."""
    u = loads[0].to(tl.float32)
    dt, dgrad = _step_dt(loads[1].to(tl.float32), bias, HAS_BIAS, SOFTPLUS, FAST)
    dt = tl.where(valid, dt, 0.0)
    brow = _unpack_tiles(loads[2], NH, NV, lx, ASM)
    return _advance(h, a2, dt, dt * u, brow, NH), u, dt, dgrad


@triton.jit
def _recompute_step(h, a2, bias, u_ptr, dl_ptr, b_ptr, s_bn, e, valid, nb, NH: tl.constexpr, NV: tl.constexpr,
                    LPC: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    FAST: tl.constexpr, lx, ASM: tl.constexpr):  # fmt: skip
    """The backward's forward recompute of one step (pointers at that step): (new state, u, dt, d dt / d delta)."""
    loads = _recompute_loads(u_ptr, dl_ptr, b_ptr, s_bn, e, valid, nb, NH, NV, LPC, lx)
    return _recompute_from(h, a2, bias, loads, valid, NH, NV, HAS_BIAS, SOFTPLUS, FAST, lx, ASM)


@triton.jit
def scan_bwd_kernel(
    u_ptr, dl_ptr, a2_ptr, b_ptr, c_ptr, d_ptr, z_ptr, bias_ptr, g_ptr,
    states_ptr, lamin_ptr, scratch_ptr,
    du_ptr, ddl_ptr, dz_ptr, y_ptr, db_part_ptr, dc_part_ptr, da_part_ptr, dd_part_ptr, dbias_part_ptr,
    L, E, seg_len, n_chunks,
    s_ub, s_ut, s_ue, s_db, s_dt, s_de, s_bb, s_bt, s_bn, s_cb, s_ct, s_cn, s_zb, s_zt, s_ze,
    s_gb, s_gt, s_ge, s_dzb, s_dzt,
    N: tl.constexpr, LPC: tl.constexpr, P: tl.constexpr, K: tl.constexpr, DUP: tl.constexpr,
    LEVELS: tl.constexpr, NV: tl.constexpr, T_SAVE: tl.constexpr, T_SUB: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LAMIN: tl.constexpr, WRITE_Y: tl.constexpr, PF: tl.constexpr, PF_LEVEL: tl.constexpr,
    PIPE: tl.constexpr, FAST: tl.constexpr, PF_REREAD: tl.constexpr, XOR: tl.constexpr, ASM: tl.constexpr,
):  # fmt: skip
    """One (batch row, 32 / LPC channels, segment) of the backward pass; one warp (see the module docstring).

    With ``LPC`` = 1 a lane holds one channel and its N states; with 2, two neighbouring lanes share a channel
    and hold N / 2 states each (half the registers, so twice the warps fit on an SM), their sums over the states
    joined by one shuffle. Outputs: du, d delta (input dtypes, (B, L, E) contiguous), dz (rows of stride
    ``s_dzt``, batches ``s_dzb``, channels contiguous: the z half of the mixer's dxz buffer), the gated output y if
    ``WRITE_Y`` (for an out-projection's weight gradient), per-warp partials of dB and dC ((B, E*LPC/32, L, N)
    fp32) and per-program partials of dA ((B*S, N, E)), dD and d bias ((B*S, E)). ``PF`` > 0: level 1 prefetches
    u, delta, B ``PF`` steps ahead of its walk and level 2 all six inputs ``PF`` steps ahead of its own (backwards).
    With ``PIPE`` level 1 loads the inputs of its next step into registers before it computes the current one
    (registers that level 1 has spare: the kernel's peak is in level 2). ``PF_REREAD`` false: level 2 prefetches
    z, g and C only (level 1 read u, delta and B). ``FAST``: the approximate softplus and sigmoid (:func:`_rcp`).
    ``XOR`` (LPC 1, N 16, bf16 B / C): the lane layout of :func:`_xor_layout`; ``ASM``: inline PTX allowed (a GPU).
    """
    BE: tl.constexpr = 32
    CH: tl.constexpr = 32 // LPC
    NH: tl.constexpr = N // LPC
    NSUB: tl.constexpr = T_SAVE // T_SUB
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_eb = tl.num_programs(1)
    n_seg = tl.num_programs(2)
    lane = tl.arange(0, BE)
    nb = (lane % LPC) * NH  # the lane's first state
    if XOR:  # one lane per channel, N = 16, bf16 B / C: the lane's states in _xor_layout's order
        lx = _xor_layout(lane)
        perm = lx[4]
    else:
        lx = None
        perm = None
    e = pid_e * CH + lane // LPC
    emask = e < E
    owner = emask & (nb == 0)  # one lane per channel writes the per-channel results
    a2 = _load_state(a2_ptr, E, e, emask, NH, nb, perm)
    bias = tl.load(bias_ptr + e, mask=emask, other=0.0) if HAS_BIAS else 0.0
    d = tl.load(d_ptr + e, mask=emask, other=0.0) if HAS_D else 0.0
    seg_slab = (pid_b * n_seg + pid_s) * N * E
    if HAS_LAMIN:
        lam_prop = _load_state(lamin_ptr + seg_slab, E, e, emask, NH, nb, perm)
    else:
        lam_prop = _zeros_tuple(BE, NH)
    da_acc = _zeros_tuple(BE, NH)
    dd_acc = tl.zeros([BE], tl.float32)
    dbias_acc = tl.zeros([BE], tl.float32)
    u_base = u_ptr + pid_b * s_ub + e * s_ue
    dl_base = dl_ptr + pid_b * s_db + e * s_de
    z_base = z_ptr + pid_b * s_zb + e * s_ze
    g_base = g_ptr + pid_b * s_gb + e * s_ge
    b_base = b_ptr + pid_b * s_bb
    c_base = c_ptr + pid_b * s_cb
    out_off = pid_b * L * E + e  # du, d delta, y are (B, L, E) contiguous
    dz_off = pid_b * s_dzb + e
    part_base = (pid_b * n_eb + pid_e) * L * N  # dB / dC partials (B, E*LPC/32, L, N)
    scratch = scratch_ptr + ((pid_b * n_eb + pid_e) * n_seg + pid_s) * NSUB * NH * BE + lane
    t_lo = pid_s * seg_len
    t_hi = tl.minimum(t_lo + seg_len, L)
    c_lo = t_lo // T_SAVE
    c_hi = (t_hi + T_SAVE - 1) // T_SAVE
    if PF > 0:
        ec = tl.minimum(e, E - 1)
        pf_u = u_ptr + pid_b * s_ub + ec * s_ue
        pf_d = dl_ptr + pid_b * s_db + ec * s_de
        pf_z = z_ptr + pid_b * s_zb + ec * s_ze if HAS_Z else None
        pf_g = g_ptr + pid_b * s_gb + ec * s_ge
        pf_b = b_base + 0 * ec
        pf_c = c_base + 0 * ec
        # level 2 re-reads u, delta and B, which level 1 read a chunk earlier (likely still in L1): asked for
        # again only with PF_REREAD, or when there is no level 1
        REREAD: tl.constexpr = PF_REREAD or NSUB == 1
        pf_u2 = pf_u if REREAD else None
        pf_d2 = pf_d if REREAD else None
        pf_r0 = pf_b if REREAD else pf_c
        s_r0 = s_bt if REREAD else s_ct
        NR2: tl.constexpr = 2 if REREAD else 1
    for ci in range(c_hi - c_lo):
        c = c_hi - 1 - ci
        t_c = c * T_SAVE
        t_ce = tl.minimum(t_c + T_SAVE, t_hi)
        h = _load_state(states_ptr + (pid_b * n_chunks + c) * N * E, E, e, emask, NH, nb, perm)
        # level 1: the state entering every T_SUB-th step of the chunk, into this program's scratch
        if NSUB > 1:
            if PF > 0:
                for pk in tl.static_range(PF):
                    _prefetch_step(t_c + pk, t_c, t_ce, pf_u, s_ut, pf_d, s_dt, None, 0, None, 0,
                                   pf_b, s_bt, None, 0, 1, PF_LEVEL)  # fmt: skip
            if PIPE:
                nxt = _recompute_loads(u_base + t_c * s_ut, dl_base + t_c * s_dt, b_base + t_c * s_bt, s_bn, e,
                                       emask, nb, NH, NV, LPC, lx)  # fmt: skip
            for j in range(NSUB):
                _store_state(scratch + j * NH * BE, BE, 0, emask, h, NH)
                for k in range(T_SUB):  # a run-time loop: unrolling it would only lengthen compilation
                    t = t_c + j * T_SUB + k
                    if PF > 0:
                        _prefetch_step(t + PF, t_c, t_ce, pf_u, s_ut, pf_d, s_dt, None, 0, None, 0,
                                       pf_b, s_bt, None, 0, 1, PF_LEVEL)  # fmt: skip
                    valid = emask & (t < t_ce)
                    if PIPE:
                        cur = nxt
                        tn = tl.minimum(t + 1, t_ce - 1)
                        nxt = _recompute_loads(u_base + tn * s_ut, dl_base + tn * s_dt, b_base + tn * s_bt, s_bn,
                                               e, emask, nb, NH, NV, LPC, lx)  # fmt: skip
                    else:
                        cur = _recompute_loads(u_base + t * s_ut, dl_base + t * s_dt, b_base + t * s_bt, s_bn, e,
                                               valid, nb, NH, NV, LPC, lx)  # fmt: skip
                    h, _u, _dt, _dg = _recompute_from(
                        h, a2, bias, cur, valid, NH, NV, HAS_BIAS, SOFTPLUS, FAST, lx, ASM
                    )
        # level 2: sub-chunks last first; states in registers, adjoint backwards
        if PF > 0:
            for pk in tl.static_range(PF):
                _prefetch_step(t_ce - 1 - pk, t_c, t_ce, pf_u2, s_ut, pf_d2, s_dt, pf_z, s_zt, pf_g, s_gt,
                               pf_r0, s_r0, pf_c, s_ct, NR2, PF_LEVEL)  # fmt: skip
        for jj in range(NSUB):
            j = NSUB - 1 - jj
            t_s = t_c + j * T_SUB
            if PF > 0:
                for pk in tl.static_range(T_SUB):
                    _prefetch_step(t_s + pk - PF, t_c, t_ce, pf_u2, s_ut, pf_d2, s_dt, pf_z, s_zt, pf_g, s_gt,
                                   pf_r0, s_r0, pf_c, s_ct, NR2, PF_LEVEL)  # fmt: skip
            if t_s < t_ce:
                if NSUB > 1:
                    h = _load_state(scratch + j * NH * BE, BE, 0, emask, NH)
                hs = ()
                us = ()
                dts = ()
                dgs = ()
                for k in tl.static_range(T_SUB):
                    t = t_s + k
                    h, u, dt, dg = _recompute_step(
                        h, a2, bias, u_base + t * s_ut, dl_base + t * s_dt, b_base + t * s_bt, s_bn, e,
                        emask & (t < t_ce), nb, NH, NV, LPC, HAS_BIAS, SOFTPLUS, FAST, lx, ASM,
                    )  # fmt: skip
                    hs = hs + (h,)
                    us = us + (u,)
                    dts = dts + (dt,)
                    dgs = dgs + (dg,)
                for k in tl.static_range(T_SUB - 1, -1, -1):
                    t = t_s + k
                    valid = emask & (t < t_ce)
                    mine = owner & (t < t_ce)
                    u = us[k]
                    dt = dts[k]
                    hk = hs[k]
                    g = _load_vec(g_base + t * s_gt, valid)
                    brow = _row(b_base + t * s_bt, s_bn, e, valid[:, None], NH, NV, nb, LPC, lx, ASM)
                    crow = _row(c_base + t * s_ct, s_cn, e, valid[:, None], NH, NV, nb, LPC, lx, ASM)
                    y_part = _dot_n(hk, crow, tl.zeros([BE], tl.float32), NH)
                    y = _pair_sum(y_part, lane, LPC) + d * u
                    if HAS_Z:
                        zz = _load_vec(z_base + t * s_zt, valid)
                        sig = _sigmoid(zz, FAST)
                        gate = zz * sig
                        gy = g * gate
                        tl.store(
                            dz_ptr + dz_off + t * s_dzt,
                            (g * y * sig * (1.0 + zz * (1.0 - sig))).to(dz_ptr.dtype.element_ty),
                            mask=mine,
                        )
                        if WRITE_Y:
                            tl.store(
                                y_ptr + out_off + t * E, (y * gate).to(y_ptr.dtype.element_ty), mask=mine
                            )
                    else:
                        gy = g
                        if WRITE_Y:
                            tl.store(y_ptr + out_off + t * E, y.to(y_ptr.dtype.element_ty), mask=mine)
                    dtu = dt * u
                    dc_terms = ()
                    db_terms = ()
                    lams = ()
                    qs = ()
                    lp = ()
                    dan = ()
                    for n in tl.static_range(NH):
                        lam_n = lam_prop[n] + crow[n] * gy
                        q = lam_n * (hk[n] - dtu * brow[n])  # lam_t * exp(dt A) h_{t-1}
                        lams = lams + (lam_n,)
                        qs = qs + (q,)
                        dan = dan + (da_acc[n] + q * dt,)
                        dc_terms = dc_terms + (gy * hk[n],)
                        db_terms = db_terms + (lam_n * dtu,)
                        lp = lp + (tl.exp2(dt * a2[n]) * lam_n,)
                    lam_prop = lp
                    da_acc = dan
                    q_a = _dot_n(qs, a2, tl.zeros([BE], tl.float32), NH)  # sum_n lam * dA h_{t-1} * A2
                    lam_b = _dot_n(lams, brow, tl.zeros([BE], tl.float32), NH)  # sum_n lam * B
                    q_a = _pair_sum(q_a, lane, LPC)
                    lam_b = _pair_sum(lam_b, lane, LPC)
                    ddt = q_a * LN2 + lam_b * u
                    du = gy * d + lam_b * dt
                    if HAS_D:
                        dd_acc += gy * u
                    ddl = tl.where(valid, ddt * dgs[k], 0.0)  # dgs: softplus' derivative, or 1 (_step_dt)
                    dbias_acc += ddl
                    tl.store(du_ptr + out_off + t * E, du.to(du_ptr.dtype.element_ty), mask=mine)
                    tl.store(ddl_ptr + out_off + t * E, ddl.to(ddl_ptr.dtype.element_ty), mask=mine)
                    t_ok = (t < t_ce) & (lane >= 0)
                    _store_lane_sums(
                        dc_part_ptr + part_base + t * N, dc_terms, lane, t_ok, nb, NH, P, K, DUP, LEVELS, lx
                    )
                    _store_lane_sums(
                        db_part_ptr + part_base + t * N, db_terms, lane, t_ok, nb, NH, P, K, DUP, LEVELS, lx
                    )
    prog_slab = (pid_b * n_seg + pid_s) * N * E
    _store_state(da_part_ptr + prog_slab, E, e, emask, da_acc, NH, nb, perm)
    tl.store(dd_part_ptr + (pid_b * n_seg + pid_s) * E + e, dd_acc, mask=owner)
    tl.store(dbias_part_ptr + (pid_b * n_seg + pid_s) * E + e, dbias_acc, mask=owner)
