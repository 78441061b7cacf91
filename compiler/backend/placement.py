"""Where tensors live: the "rows" layout of lpusim.program, and an SRAM allocator.

A tensor is viewed as (rows, cols) with cols its last dimension; each row takes
vpr = ceil(cols / lanes) vectors; byte b of every element lives in slice slices[b] at
addr + vector index. The allocator hands out address ranges common to a group of slices and
remembers, for a range it takes back, the cycle after which it may be written again.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from compiler.errors import CompileError, NoRoomError


@dataclass(frozen=True)
class Placement:
    dtype: str  # machine dtype (isa.dtypes name)
    shape: tuple[int, ...]
    rows: int
    cols: int
    vpr: int
    slices: tuple[int, ...]
    addr: int

    @property
    def nvec(self) -> int:
        return self.rows * self.vpr

    def vaddr(self, row: int, tile: int) -> int:
        return self.addr + row * self.vpr + tile


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    return (math.prod(shape[:-1]) if len(shape) > 1 else 1), shape[-1]


# a tensor takes the first group from the cursor whose space is free by `now`, failing that the
# group free soonest of all: space free only later makes the new tensor's writes wait for the
# old one's last reads, a false dependency. Trying every group (rather than the first that fits
# and two past it, the rule for programs with MatMuls of many rows until now): BERT-base int8
# at seq 128 1,041,338 -> 971,845 cycles, where the third and fourth of Softmax's row blocks
# had waited up to 13,000 cycles for temporaries; GPT-2-small's one-token step, which already
# tried every group for its few-row nodes, is unchanged (71,968). Space never written counts as
# free at cycle 0 but is taken only while constants keep room; when that is the best found,
# the search stops _LOOK_AHEAD groups past the first that fits
_LOOK_AHEAD = 2
# with Allocator.near set, tensors of at most NEAR_VECTORS vectors per byte go to the slices
# within NEAR_POSITIONS of the VXM when they have room (measured on GPT-2-small's one-token
# step: 127,885 cycles without; 6 positions 128,940, 10: 118,541, 12: 117,758, 16: 117,580,
# 20: 119,550, 24: 120,010; at most 4 vectors 120,812, 8: 120,516, 16 to 64: 117,580)
NEAR_POSITIONS = 16
NEAR_VECTORS = 16


class Allocator:
    """First-fit over groups of consecutive slices (one slice per byte of the element)."""

    def __init__(self, arch, slices: list[int]):
        self.arch = arch
        self.words = arch.mem_words_per_slice
        self.slices = slices
        # per slice: sorted list of free ranges (start, end, free_after_cycle)
        self.free: dict[int, list[tuple[int, int, int]]] = {s: [(0, self.words, 0)]
                                                            for s in slices}
        self.cursor = 0
        self.pristine = {s: self.words for s in slices}  # words never written, per slice
        # tensors computed from another one and shared by its readers (e.g. its quantized
        # form): (slices, addr) of the source -> {key: (placements, value)}; freed with it
        self.derived: dict[tuple, dict] = {}
        # the earliest cycle the work being lowered can start (compile sets it per node).
        # Space written before and free by then is taken first: space freed later would make
        # the new tensor's writes wait for the old one's last reads (a false dependency), and
        # never-written space is kept for constants, which need it
        self.now = 0
        # slices near the VXM, preferred for small tensors while `near` is set (the compiler
        # sets it for latency-bound nodes: a chain of VXM passes between them makes short
        # trips)
        V = arch.vxm_position
        self.near_slices = frozenset(s for s in slices
                                     if abs(arch.mem_slice_position(s) - V) <= NEAR_POSITIONS)
        self.near = False
        # slices preferred for the temporaries of the work being lowered (a block of rows
        # kept apart from the other blocks' ports), or None
        self.region: frozenset[int] | None = None
        # runs of consecutive slices on one side of the VXM: a group never straddles the
        # middle of the chip (its byte planes must stream towards any unit the same way)
        west = [arch.mem_slice_position(s) < arch.vxm_position for s in slices]
        self.runs: list[list[int]] = []
        for s, w in zip(slices, west, strict=True):
            if self.runs and w == west[slices.index(self.runs[-1][-1])]:
                self.runs[-1].append(s)
            else:
                self.runs.append([s])

    def alloc(self, dtype: str, shape: tuple[int, ...], nbytes: int,
              avoid: frozenset[int] = frozenset(),
              resident: bool = False,
              only: frozenset[int] | None = None) -> tuple[Placement, int]:
        """A placement (in no slice of `avoid`) and the first cycle it may be written.
        A resident tensor (a constant or input, in SRAM before the program starts) only takes
        space no other tensor has used, from the top of the slices down."""
        got = self.try_alloc(dtype, shape, nbytes, avoid, resident, only)
        if got is None and not resident:  # last resort: a range across free space written
            # before and space never written (kept apart for constants, so a tensor larger
            # than either part found no range though the whole was free)
            got = self.try_alloc(dtype, shape, nbytes, avoid, resident, only, straddle=True)
        if got is not None:
            return got
        rows, cols = rows_cols(shape)
        n = max(1, rows * max(1, math.ceil(cols / self.arch.lanes)))
        need = n * nbytes * self.arch.lanes
        have = sum(e - a for s in self.slices for (a, e, _) in self.free[s])
        raise NoRoomError(f"the model does not fit one chip: a tensor of shape {list(shape)} "
                           f"needs {need:,} bytes in {nbytes} slice(s) and no range is free "
                           f"({have * self.arch.lanes:,} bytes free in all, fragmented); "
                           f"SRAM is {self.arch.sram_bytes:,} bytes")

    def try_alloc(self, dtype: str, shape: tuple[int, ...], nbytes: int,
                  avoid: frozenset[int] = frozenset(), resident: bool = False,
                  only: frozenset[int] | None = None, bank: int | None = None,
                  straddle: bool = False) -> tuple[Placement, int] | None:
        """alloc, or None where it would raise for want of space (a preference the caller
        can drop cheaply). With `bank`, the placement lies in that bank of its slices (a
        slice reads one bank while it writes the other: placements in different banks may
        share slices in one cycle's reads and writes). With `straddle`, a range may span
        adjacent free ranges (written before and never written)."""
        rows, cols = rows_cols(shape)
        vpr = max(1, math.ceil(cols / self.arch.lanes))
        n = max(1, rows * vpr)
        if n > self.words:
            raise NoRoomError(f"a tensor of shape {list(shape)} ({dtype}) takes {n:,} vectors "
                               f"per byte, more than one MEM slice holds ({self.words:,}); "
                               "tensors spread over several slices are not lowered yet")
        groups = [run[i:i + nbytes] for run in self.runs
                  for i in range(0, len(run) - nbytes + 1, nbytes)]
        got = None
        if self.near and only is None and not resident and bank is None \
                and n <= NEAR_VECTORS:
            got = self._find(groups, n, avoid, self.near_slices, resident, bank, straddle)
        if got is None and self.region is not None and not resident:
            pref = self.region if only is None else self.region & only
            if pref:
                got = self._find(groups, n, avoid, pref, resident, bank, straddle)
        if got is None:
            got = self._find(groups, n, avoid, only, resident, bank, straddle)
        if got is None:
            return None
        j, addr, after = got
        grp = groups[j]
        for s in grp:
            self._take(s, addr, addr + n)
        self.cursor = (j + 1) % len(groups)
        return Placement(dtype, shape, rows, cols, vpr, tuple(grp), addr), after

    def _find(self, groups, n: int, avoid, only, resident: bool, bank, straddle: bool = False):
        """(group index, address, first free cycle) for n vectors: the first group from the
        cursor free by now, else the one free soonest (see _LOOK_AHEAD)."""
        best = None  # (j, addr, after, k of the first that fits)
        for k in range(len(groups)):
            if best is not None and k > best[3] + _LOOK_AHEAD and best[2] <= self.now:
                break
            j = (self.cursor + k) % len(groups)
            grp = groups[j]
            if avoid & set(grp) or (only is not None and not set(grp) <= only):
                continue
            got = self._spanning(grp, n) if straddle else self._common(grp, n, resident, bank)
            if got is None:
                continue
            addr, after, free_now = got
            if free_now:
                return j, addr, after
            if best is None:
                best = (j, addr, after, k)
            elif after < best[2]:
                best = (j, addr, after, best[3])
        return None if best is None else best[:3]

    def derive(self, src: Placement, key, placements: list[Placement], value) -> None:
        """Remember `value` computed from src (held in `placements`) until src is released;
        the placements are released with it."""
        self.derived.setdefault((src.slices, src.addr), {})[key] = (placements, value)

    def derived_value(self, src: Placement, key):
        got = self.derived.get((src.slices, src.addr), {}).get(key)
        return None if got is None else got[1]

    def release(self, p: Placement, after_cycle: int) -> None:
        for held, _ in self.derived.pop((p.slices, p.addr), {}).values():
            for q in held:
                self.release(q, after_cycle)
        after_cycle = max(after_cycle, 1)  # 0 marks space never written (see alloc)
        for s in p.slices:
            merged: list[tuple[int, int, int]] = []
            for a, e, f in sorted(self.free[s] + [(p.addr, p.addr + p.nvec, after_cycle)]):
                # used and never-used space stay apart: constants need the latter
                if merged and a <= merged[-1][1] and (f == 0) == (merged[-1][2] == 0):
                    pa, pe, pf = merged[-1]
                    merged[-1] = (pa, max(pe, e), max(pf, f))
                else:
                    merged.append((a, e, f))
            self.free[s] = merged

    def _common(self, grp, n, resident=False, bank=None):
        if resident:  # pristine space only (never written), highest addresses first
            if bank is not None:
                raise CompileError("internal: a resident tensor placed in one bank")
            cands = sorted({e - n for s in grp for (a, e, f) in self.free[s]
                            if e - a >= n and f == 0}, reverse=True)
        elif bank is None:
            cands = sorted({a for s in grp for (a, e, _) in self.free[s] if e - a >= n})
        else:  # starts moved into the bank, the range kept inside it
            wpb = self.arch.mem_words_per_bank
            lo, hi = bank * wpb, (bank + 1) * wpb
            cands = sorted({max(a, lo) for s in grp for (a, e, _) in self.free[s]
                            if min(e, hi) - max(a, lo) >= n})
        first = None
        # each slice's free ranges are sorted and disjoint: the one holding addr by bisection
        segs = [self.free[s] for s in grp]
        starts = [[a for a, _, _ in sg] for sg in segs]
        for addr in cands:
            after = 0
            pristine = False
            ok = True
            for sg, st in zip(segs, starts, strict=True):
                i = bisect.bisect_right(st, addr) - 1
                if i < 0:
                    ok = False
                    break
                _, e, f = sg[i]
                if addr + n > e or (resident and f):
                    ok = False
                    break
                after = max(after, f)
                pristine = pristine or f == 0
            if ok:
                if resident:
                    return addr, after, True
                # free by now: written before, or never written while constants keep room
                if after <= self.now and (not pristine or self._ample(grp, n)):
                    return addr, after, True
                if first is None:
                    first = (addr, after, False)
        return first

    def _spanning(self, grp, n):
        """_common's (address, first free cycle, free now) for n words in every slice of grp,
        a range that may span adjacent free ranges; the lowest such address."""
        def runs(s):  # adjacent free ranges merged: (start, end)
            out: list[list[int]] = []
            for a, e, _ in self.free[s]:
                if out and a == out[-1][1]:
                    out[-1][1] = e
                else:
                    out.append([a, e])
            return out

        per = [runs(s) for s in grp]
        for addr in sorted({a for r in per for a, e in r if e - a >= n}):
            if all(any(a <= addr and addr + n <= e for a, e in r) for r in per):
                after = max(f for s in grp for a, e, f in self.free[s]
                            if a < addr + n and e > addr)
                return addr, after, after <= self.now
        return None

    def _ample(self, grp, n) -> bool:
        """Would every slice of grp keep a quarter of its words never written after taking n
        more?"""
        return all(self.pristine[s] - n >= self.words // 4 for s in grp)

    def _take(self, s, lo, hi):
        out = []
        for a, e, f in self.free[s]:
            if e <= lo or a >= hi:
                out.append((a, e, f))
                continue
            if f == 0:
                self.pristine[s] -= min(e, hi) - max(a, lo)
            if a < lo:
                out.append((a, lo, f))
            if hi < e:
                out.append((hi, e, f))
        self.free[s] = out
