"""Timing-only fast path: decide whether a decoded program is free of timing hazards by
checking each machine rule over whole instructions (runs of vectors) instead of event by event.

Every rule the event kernel checks in timing mode is a property of sets of (place, cycle)
pairs, independent of the order the events run in:
- stream-conflict: two writes of one stream at one position in one cycle;
- stream-empty: a read of a stream at position q on diagonal d with no write on d upstream of q
  (in timing mode no values flow, so only the existence of a writer matters);
- mem-port: two reads (or two writes) of one slice in one cycle, or a read and a write of one
  bank in one cycle;
- alu-busy: two instructions on one VXM ALU in one cycle;
- MXM state (install before load, dtype, accumulators): sequential per plane, checked by the
  event kernel run on the MXM instructions alone.
So when every check passes, the program has no hazard. When one fails, the caller runs the event
kernel, which reports the first hazard in event order exactly as the reference does.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lpusim.sim import opcodes as oc
from lpusim.sim.decode import C, Decoded


@njit(cache=True)
def _runs_overlap(key, start, end):
    """Runs sorted by (key, start): does any run overlap an earlier one with the same key?"""
    n = key.shape[0]
    hi = -(1 << 62)
    prev = -1
    for i in range(n):
        if i == 0 or key[i] != prev:
            hi = -(1 << 62)
            prev = key[i]
        if start[i] < hi:
            return True
        if end[i] > hi:
            hi = end[i]
    return False


def _sort_order(key: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Order by (key, start) with one argsort of a combined int64 where it fits."""
    lo = int(start.min())
    span = int(start.max()) - lo + 1
    bits = max(1, span.bit_length())
    if int(key.max()).bit_length() + bits <= 62 and int(key.min()) >= 0:
        return np.argsort((key << bits) | (start - lo))  # ties may come in any order
    return np.lexsort((start, key))


def _overlap(key: np.ndarray, start: np.ndarray, end: np.ndarray) -> bool:
    if len(key) < 2:
        return False
    order = _sort_order(key, start)
    return bool(_runs_overlap(key[order], start[order], end[order]))


@njit(cache=True)
def _find(nxt, x):
    root = x
    while nxt[root] != root:
        root = nxt[root]
    while nxt[x] != root:  # path compression
        y = nxt[x]
        nxt[x] = root
        x = y
    return root


@njit(cache=True)
def _streams_covered(group, pos_key, is_read, d0, n, step, nxt_buf):
    """Events sorted by (group, pos_key, is_read desc): per group, union-find over diagonals
    marks those written from positions already passed; each read must find its diagonals
    marked. pos_key orders positions in the flow direction, so writers upstream come first."""
    N = group.shape[0]
    i = 0
    while i < N:
        j = i
        lo = d0[i]
        hi = d0[i] + (n[i] - 1) * step[i]
        while j < N and group[j] == group[i]:
            lo = min(lo, d0[j])
            hi = max(hi, d0[j] + (n[j] - 1) * step[j])
            j += 1
        size = hi - lo + 2
        nxt = nxt_buf[:size]
        for x in range(size):
            nxt[x] = x
        for e in range(i, j):
            a = d0[e] - lo
            if is_read[e]:
                if step[e] == 1:
                    if _find(nxt, a) < a + n[e]:
                        return False
                else:
                    for v in range(n[e]):
                        x = a + v * step[e]
                        if _find(nxt, x) == x:
                            return False
            else:
                b = a + n[e]
                x = _find(nxt, a)
                while x < b:
                    nxt[x] = x + 1
                    x = _find(nxt, x + 1)
        i = j
    return True


def timing_clean(dec: Decoded, arch) -> bool:
    """True if the program has no timing hazard (see the module docstring)."""
    cols = dec.cols
    if cols.shape[1] == 0:
        return True
    col = {name: cols[C[name]] for name in
           ("op", "chip", "pos", "uidx", "t0", "count", "interval", "lat", "nops", "addr",
            "stride", "r1_dir", "r1_s", "r1_n", "r1_step", "r2_dir", "r2_s", "r2_n", "w_dir",
            "w_s", "w_n", "w_step")}
    op = col["op"]
    S = arch.streams_per_direction
    P = arch.num_positions
    if (col["w_n"] > 0).any() and (col["interval"][col["w_n"] > 0] != 1).any():
        return False  # writers stream one vector per cycle on every unit; else be exact
    # --- streams: expand each instruction to one run per stream it writes or reads
    runs = []
    for kind, d, s, nstr, step in (("w", "w_dir", "w_s", "w_n", "w_step"),
                                   ("r", "r1_dir", "r1_s", "r1_n", "r1_step"),
                                   ("r", "r2_dir", "r2_s", "r2_n", None)):
        m = col[nstr] > 0
        if not m.any():
            continue
        k = np.flatnonzero(m)
        reps = col[nstr][k]
        kk = np.repeat(k, reps)
        j = np.arange(len(kk)) - np.repeat(np.cumsum(reps) - reps, reps)
        st = col[step][kk] if step else np.ones(len(kk), np.int64)
        runs.append((kind, kk, col[d][kk], col[s][kk] + j * st))
    wk = [(kk, dd, ss) for kind, kk, dd, ss in runs if kind == "w"]
    rk = [(kk, dd, ss) for kind, kk, dd, ss in runs if kind == "r"]
    if wk:
        kk, dd, ss = (np.concatenate(x) for x in zip(*wk, strict=True))
        t_w = col["t0"][kk] + col["lat"][kk]
        key = ((col["chip"][kk] * 2 + dd) * S + ss) * P + col["pos"][kk]
        if _overlap(key, t_w, t_w + col["count"][kk]):
            return False
    else:
        kk = dd = ss = np.zeros(0, np.int64)
        t_w = kk
    if rk:
        rkk, rdd, rss = (np.concatenate(x) for x in zip(*rk, strict=True))
        # events: writes then reads; diagonal start and step
        group = np.concatenate([(col["chip"][kk] * 2 + dd) * S + ss,
                                (col["chip"][rkk] * 2 + rdd) * S + rss])
        d_all = np.concatenate([dd, rdd])
        pos = np.concatenate([col["pos"][kk], col["pos"][rkk]])
        t_start = np.concatenate([t_w, col["t0"][rkk]])
        d0 = np.where(d_all == 0, t_start - pos, t_start + pos)
        n = np.concatenate([col["count"][kk], col["count"][rkk]])
        step = np.concatenate([np.ones(len(kk), np.int64), col["interval"][rkk]])
        is_read = np.concatenate([np.zeros(len(kk), bool), np.ones(len(rkk), bool)])
        pos_key = np.where(d_all == 0, pos, P - 1 - pos)
        order = _sort_order(group, pos_key * 2 + (~is_read).astype(np.int64))
        span = int((d0 + (n - 1) * step).max() - d0.min()) + 2
        buf = np.empty(span, np.int64)
        if not _streams_covered(group[order], pos_key[order], is_read[order], d0[order],
                                n[order], step[order], buf):
            return False
    # --- MEM ports
    wpb = arch.mem_words_per_bank
    rd = (op == oc.OP_MEM_READ) | (op == oc.OP_MEM_GATHER)
    wr = (op == oc.OP_MEM_WRITE) | (op == oc.OP_MEM_SCATTER)
    slot_key = col["chip"] * arch.mem_slices + col["uidx"]
    t_port = np.where(wr, col["t0"] + col["lat"], col["t0"])
    for m in (rd, wr):
        if _overlap(slot_key[m], t_port[m], t_port[m] + col["count"][m]):
            return False
    # read/write on one bank in one cycle: split runs where the address crosses a bank
    sub = []
    for m, is_w in ((rd, 0), (wr, 1)):
        k = np.flatnonzero(m)
        if not len(k):
            continue
        plain = (op[k] == oc.OP_MEM_READ) | (op[k] == oc.OP_MEM_WRITE)
        a0 = col["addr"][k]
        a1 = np.where(plain, a0 + (col["count"][k] - 1) * col["stride"][k], a0)
        b0, b1 = a0 // wpb, a1 // wpb
        t0, n = t_port[k], col["count"][k]
        same = b0 == b1
        s_ = col["stride"][k]
        # first vector index whose address lies in bank b1 (addresses are monotonic in i)
        up = np.where(s_ > 0, -((a0 - b1 * wpb) // np.maximum(s_, 1)), 0)  # ceil((B-a0)/s)
        down = np.where(s_ < 0, (b0 * wpb - a0) // np.minimum(s_, -1) + 1, 0)
        first_b1 = np.where(same, n, np.where(s_ > 0, up, down))
        first_b1 = np.clip(first_b1, 0, n)
        sub.append((slot_key[k], b0, t0, t0 + first_b1, np.full(len(k), is_w)))
        sub.append((slot_key[k], b1, t0 + first_b1, t0 + n, np.full(len(k), is_w)))
    if len(sub) == 4:
        key, bank, s0, s1, isw = (np.concatenate(x) for x in zip(*sub, strict=True))
        keep = s1 > s0
        if _rw_overlap(key[keep] * 64 + bank[keep], s0[keep], s1[keep], isw[keep]):
            return False
    # --- VXM ALUs
    vx = np.flatnonzero(col["nops"] > 0)
    if len(vx):
        reps = col["nops"][vx]
        kk2 = np.repeat(vx, reps)
        j = np.arange(len(kk2)) - np.repeat(np.cumsum(reps) - reps, reps)
        key = col["chip"][kk2] * arch.vxm_alus + col["uidx"][kk2] + j
        if _overlap(key, col["t0"][kk2], col["t0"][kk2] + col["count"][kk2]):
            return False
    # --- MXM state: the event kernel on the MXM instructions alone, without streams
    mx = (op == oc.OP_MXM_LW) | (op == oc.OP_MXM_IW) | (op == oc.OP_MXM_ABC) | \
        (op == oc.OP_MXM_ACC)
    if mx.any():
        from lpusim.simulator import run_mxm_only

        if not run_mxm_only(dec, arch, mx):
            return False
    return True


def _rw_overlap(key, start, end, is_w) -> bool:
    """Does a read run overlap a write run with the same key (slice and bank)?"""
    if len(key) < 2:
        return False
    order = _sort_order(key, start)
    return bool(_rw_sweep(key[order], start[order], end[order], is_w[order]))


@njit(cache=True)
def _rw_sweep(key, start, end, is_w):
    hi_r = -(1 << 62)
    hi_w = -(1 << 62)
    for i in range(key.shape[0]):
        if i == 0 or key[i] != key[i - 1]:
            hi_r = -(1 << 62)
            hi_w = -(1 << 62)
        if is_w[i]:
            if start[i] < hi_r:
                return True
            hi_w = max(hi_w, end[i])
        else:
            if start[i] < hi_w:
                return True
            hi_r = max(hi_r, end[i])
    return False
