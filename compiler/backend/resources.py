"""The reservation table of the static scheduler: every resource the simulator checks.

A Reservation is built for a candidate start cycle and either committed whole or dropped, so a
job never holds half its resources. The rules are the simulator's (lpusim/sim/reference.py):
- a queue issues at most one instruction per cycle;
- a MEM slice reads one vector and writes one vector per cycle, on different banks;
- a VXM ALU takes one vector per cycle;
- a stream carries one value per diagonal between its writer and its reader: two flows on one
  stream and diagonal conflict when their position spans [writer, reader) overlap.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field

# The bank of a read whose addresses depend on data (a gather): it conflicts with a write to
# any bank of its slice in that cycle.
ALL_BANKS = -1


# The stream table holds runs of consecutive diagonals (d0, d1, position span) filed under
# every bucket of 2**_BUCKET diagonals they touch; a key is one int per (direction, stream,
# bucket), any integer bucket.
_SK = 1 << 12  # > streams per direction
_DK = 2 * _SK
_BUCKET = 6


def _diag_runs(diags):
    """Maximal runs [d0, d1) of consecutive diagonals, in order."""
    n = len(diags)
    if type(diags) is range and diags.step == 1:
        return [(diags.start, diags.stop)] if n else []
    if n and diags[-1] == diags[0] + n - 1 and diags == list(range(diags[0], diags[0] + n)):
        return [(diags[0], diags[0] + n)]
    out = []
    it = iter(diags)
    for d in it:
        d0 = d1 = d
        break
    else:
        return out
    for d in it:
        if d == d1 + 1:
            d1 = d
        else:
            out.append((d0, d1 + 1))
            d0 = d1 = d
    out.append((d0, d1 + 1))
    return out


def diagonal(direction: int, position: int, cycle: int) -> int:
    return cycle - position if direction == 0 else cycle + position


def span(direction: int, writer: int, reader: int) -> tuple[int, int]:
    """Positions a value occupies from its writer to its reader, half-open."""
    return (writer, reader) if direction == 0 else (reader + 1, writer + 1)


def _conflict(a: int, b: int) -> bool:
    """Do a read of bank a and a write of bank b in one cycle collide?"""
    return a == b or a == ALL_BANKS or b == ALL_BANKS


# fit's moves at most: past them it returns what it has, a shift the job needs at least
FIT_MOVES = 64


class Ports:
    """The cycles one port of a MEM slice is taken, as sorted disjoint runs [start, end) with
    the bank each run uses (runs of one bank that touch are merged)."""

    __slots__ = ("starts", "ends", "banks")

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.banks: list[int] = []

    def first_busy(self, c0: int, c1: int) -> int | None:
        """The first taken cycle in [c0, c1), or None."""
        i = bisect_right(self.starts, c0) - 1
        if i >= 0 and self.ends[i] > c0:
            return c0
        if i + 1 < len(self.starts) and self.starts[i + 1] < c1:
            return self.starts[i + 1]
        return None

    def first_busy_every(self, c0: int, c1: int, step: int) -> int | None:
        """The first taken cycle of range(c0, c1, step), or None."""
        if c0 >= c1:
            return None
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, c0) - 1
        if i >= 0 and ends[i] > c0:
            return c0
        i += 1
        n = len(starts)
        while i < n and starts[i] < c1:
            x = starts[i] + (c0 - starts[i]) % step  # the range's first cycle in the stretch
            if x < ends[i] and x < c1:
                return x
            i += 1
        return None

    def free_after(self, cycle: int) -> int:
        """The first free cycle after `cycle`."""
        i = bisect_right(self.starts, cycle) - 1
        if i < 0 or self.ends[i] <= cycle:
            return cycle + 1
        e = self.ends[i]
        while i + 1 < len(self.starts) and self.starts[i + 1] == e:
            i += 1
            e = self.ends[i]
        return e

    def fit(self, runs, shift: int = 0) -> int:
        """The least shift >= `shift` that leaves every run [c0, c1) of `runs` free (fit)."""
        return fit([(self, runs)], shift)

    def first_conflict(self, c0: int, c1: int, bank: int) -> tuple[int, int] | None:
        """(the first cycle in [c0, c1) in which this port uses a bank colliding with `bank`,
        the end of that use), or None."""
        starts, ends, banks = self.starts, self.ends, self.banks
        i = max(bisect_right(starts, c0) - 1, 0)
        while i < len(starts) and starts[i] < c1:
            if ends[i] > c0 and _conflict(bank, banks[i]):
                return max(starts[i], c0), ends[i]
            i += 1
        return None

    def add(self, c0: int, c1: int, bank: int) -> None:
        starts, ends, banks = self.starts, self.ends, self.banks
        i = bisect_right(starts, c0)
        if i > 0 and ends[i - 1] == c0 and banks[i - 1] == bank:
            ends[i - 1] = c1
            if i < len(starts) and starts[i] == c1 and banks[i] == bank:
                ends[i - 1] = ends[i]
                del starts[i], ends[i], banks[i]
            return
        if i < len(starts) and starts[i] == c1 and banks[i] == bank:
            starts[i] = c0
            return
        starts.insert(i, c0)
        ends.insert(i, c1)
        banks.insert(i, bank)


def fit(items, shift: int = 0, moves: int = FIT_MOVES) -> int:
    """The least shift >= `shift` that leaves every run [c0, c1) of cycles free on its port,
    for every (Ports, runs) of `items` (a job's cycles all move with its start), or a lower
    bound on it after `moves` moves; `runs` may also be a range of cycles with a step above 1
    (every cycle a run of its own). A run that meets a taken stretch must start past its end;
    the others are checked again from there."""
    flat = []
    for p, runs in items:
        if type(runs) is range:
            flat.append((p, runs.start, runs.stop, runs.step))
        else:
            flat.extend((p, c0, c1, 0) for c0, c1 in runs)
    n = len(flat)
    i = clean = 0
    while clean < n:
        p, c0, c1, step = flat[i]
        if step:
            fb = p.first_busy_every(c0 + shift, c1 + shift, step)
        else:
            fb = p.first_busy(c0 + shift, c1 + shift)
        if fb is None:
            clean += 1
            i = i + 1 if i + 1 < n else 0
            continue
        # the run (or the one cycle of a stepped range) that met it starts past the stretch
        shift = p.free_after(fb) - (fb - shift if step else c0)
        clean = 0
        moves -= 1
        if moves <= 0:
            break
    return shift


def shifted(seq, d: int):
    """x + d for every x of seq (a range stays a range: the common case of consecutive cycles
    or addresses costs O(1) through the scheduler)."""
    if type(seq) is range:
        return range(seq.start + d, seq.stop + d, seq.step)
    return [x + d for x in seq]


def as_range(seq):
    """seq as a range when its items are evenly spaced (step not 0), else seq."""
    if type(seq) is range or len(seq) < 2:
        return seq
    a, step = seq[0], seq[1] - seq[0]
    if step == 0 or seq[-1] != a + step * (len(seq) - 1):
        return seq
    r = range(a, seq[-1] + (1 if step > 0 else -1), step)
    return r if list(r) == list(seq) else seq


def banks_of(addrs, words_per_bank: int):
    """The bank of every address: one int when they all lie in one bank (checked in O(1) for
    a range), else a list."""
    if type(addrs) is range and len(addrs):  # monotone: one bank if its ends are
        b0 = addrs[0] // words_per_bank
        if addrs[-1] // words_per_bank == b0:
            return b0
    return [a // words_per_bank for a in addrs]


def cycle_runs(cycles) -> list[tuple[int, int]]:
    """[start, end) of the maximal runs of consecutive cycles, in order."""
    n = len(cycles)
    if n == 0:
        return []
    if type(cycles) is range:
        if cycles.step == 1:
            return [(cycles.start, cycles.stop)]
        if cycles.step > 1:  # every cycle a run of its own
            return [(c, c + 1) for c in cycles]
    c0 = cycles[0]
    if n == 1 or cycles[-1] == c0 + n - 1 and cycles == list(range(c0, c0 + n)):
        return [(c0, c0 + n)]
    out = []
    s = c0
    for i in range(1, n):
        if cycles[i] != cycles[i - 1] + 1:
            out.append((s, cycles[i - 1] + 1))
            s = cycles[i]
    out.append((s, cycles[-1] + 1))
    return out


def port_runs(cycles, banks) -> list[tuple[int, int, int]]:
    """(start, end, bank) of the maximal runs of consecutive cycles on one bank, in order;
    banks: one per cycle, or one int for all."""
    n = len(cycles)
    if n == 0:
        return []
    if type(banks) is int:
        if type(cycles) is range and cycles.step == 1:
            return [(cycles.start, cycles.stop, banks)]
        banks = [banks] * n
    cycles = list(cycles)
    c0 = cycles[0]
    if (n == 1 or cycles[-1] == c0 + n - 1 and cycles == list(range(c0, c0 + n))) and \
            banks.count(banks[0]) == n:
        return [(c0, c0 + n, banks[0])]
    out = []
    s, b = c0, banks[0]
    for i in range(1, n):
        if cycles[i] != cycles[i - 1] + 1 or banks[i] != b:
            out.append((s, cycles[i - 1] + 1, b))
            s, b = cycles[i], banks[i]
    out.append((s, cycles[-1] + 1, b))
    return out


@dataclass
class Table:
    issue: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    read_port: dict[int, Ports] = field(default_factory=lambda: defaultdict(Ports))
    write_port: dict[int, Ports] = field(default_factory=lambda: defaultdict(Ports))
    alu: dict[int, Ports] = field(default_factory=lambda: defaultdict(Ports))  # bank 0
    # (direction, stream, bucket) as one int key -> runs (d0, d1, first position, end)
    streams: dict[int, list[tuple[int, int, int, int]]] = field(
        default_factory=lambda: defaultdict(list))
    last: int = 0  # the latest cycle any reservation touches


class Reservation:
    """Resources a job would take if placed at one start cycle; check as you add."""

    def __init__(self, table: Table):
        self.t = table
        self.issue: list[tuple[str, int]] = []
        self.reads: list[tuple[int, int, int, int]] = []  # (slice, start, end, bank)
        self.writes: list[tuple[int, int, int, int]] = []
        self.alus: list[tuple[int, int, int]] = []  # (ALU, start, end)
        self.flows: list[tuple[int, tuple[int, int, int, int]]] = []
        self._mine_issue: set[tuple[str, int]] = set()
        self._mine_r: dict[int, list[tuple[int, int, int]]] = {}  # slice -> runs taken
        self._mine_w: dict[int, list[tuple[int, int, int]]] = {}
        self._mine_alu: dict[int, list[tuple[int, int]]] = {}  # ALU -> runs taken
        self._mine_streams: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
        # when the job does not fit: how far its start must move at least before the resource
        # that refused it is free (every cycle of a job moves with its start)
        self.skip = 1
        self._hints = True  # off once a choice was undone: its hint need not bind the others

    def need(self, delta: int) -> None:
        """Record that the job cannot fit unless it starts at least `delta` cycles later."""
        if self._hints:
            self.skip = max(self.skip, delta)

    def first_fit(self, options, attempt):
        """The first of `options` for which attempt(option) takes its resources, each tried
        from the same state (a failed one undone); None when none does, with the least of
        the options' hints. Valid where the options' resources do not depend on choices
        made earlier in the job (a hint then binds whichever option is taken)."""
        snap, least = self.snapshot(), None
        for o in options:
            self.skip, self._hints = 1, True
            if attempt(o):
                return o
            least = self.skip if least is None else min(least, self.skip)
            self.restore(snap)
        self.skip, self._hints = least or 1, True
        return None

    def need_free(self, busy: set[int], cycle: int) -> None:
        """Record the shift to the first cycle after `cycle` that is not in `busy` (a queue's
        issue cycles; a port's stretches are Ports.fit's)."""
        c = cycle + 1
        while c in busy:
            c += 1
        self.need(c - cycle)

    def take_issue(self, queue: str, cycle: int) -> bool:
        if cycle < 0:
            self.need(-cycle)
            return False
        if cycle in self.t.issue[queue]:
            self.need_free(self.t.issue[queue], cycle)
            return False
        if (queue, cycle) in self._mine_issue:
            return False
        self._mine_issue.add((queue, cycle))
        self.issue.append((queue, cycle))
        return True

    def take_reads(self, sl: int, cycles, banks, free: bool = False) -> bool:
        """take_read of every (cycle, bank), in order; False at the first that fails. `free`:
        the caller has checked that no committed read takes any of the cycles."""
        return self._take_port(sl, cycles, banks, False, free)

    def take_writes(self, sl: int, cycles, banks) -> bool:
        """take_write of every (cycle, bank), in order; False at the first that fails."""
        return self._take_port(sl, cycles, banks, True)

    def _take_port(self, sl: int, cycles, banks, write: bool, free: bool = False) -> bool:
        """Take the port in every cycle, in runs. A run fails at its first cycle that is
        negative, taken (committed: the hint says how far to move; not looked up when `free`),
        taken by this job, or in which the other port uses a colliding bank."""
        t = self.t
        busy, other = (t.write_port[sl], t.read_port[sl]) if write else \
            (t.read_port[sl], t.write_port[sl])
        mine_d, other_d = (self._mine_w, self._mine_r) if write else (self._mine_r, self._mine_w)
        mine = mine_d.setdefault(sl, [])
        earlier = list(mine)  # the runs this job took before this call
        mine_other = other_d.get(sl, ())
        taken = self.writes if write else self.reads
        end = None  # the runs' latest end: a run from there on meets none of this call's
        for c0, c1, bank in port_runs(cycles, banks):
            if c0 < 0:
                self.need(-c0)
                return False
            first = c1
            fb = None if free else busy.first_busy(c0, c1)
            if fb is not None:
                first = fb
            for m0, m1, _ in (earlier if end is None or c0 >= end else mine):
                if m0 < first and c0 < m1:
                    first = max(m0, c0)
            fo = other.first_conflict(c0, first, bank)
            if fo is not None:
                first = fo[0]
            for m0, m1, mb in mine_other:
                if m0 < first and c0 < m1 and _conflict(bank, mb):
                    first = max(m0, c0)
            if first < c1:
                if first == fb:  # the run must move to a free stretch of its length
                    self.need(busy.fit([(c0, c1)]))
                elif fo is not None and first == fo[0]:  # the run must start past that use
                    self.need(fo[1] - c0)
                return False
            mine.append((c0, c1, bank))
            taken.append((sl, c0, c1, bank))
            end = c1 if end is None else max(end, c1)
        return True

    def take_alus(self, alu: int, c0: int, c1: int) -> bool:
        """Take VXM ALU `alu` in cycles [c0, c1)."""
        busy = self.t.alu[alu]
        fb = busy.first_busy(c0, c1)
        mine = self._mine_alu.setdefault(alu, [])
        first = c1 if fb is None else fb
        for m0, m1 in mine:
            if m0 < first and c0 < m1:
                first = max(m0, c0)
        if first < c1:
            if first == fb:
                self.need(busy.fit([(c0, c1)]))
            return False
        mine.append((c0, c1))
        self.alus.append((alu, c0, c1))
        return True

    def flow_free(self, direction: int, s: int, diags, sp: tuple[int, int]) -> bool:
        """Is stream s free over positions sp on every one of `diags`?"""
        return self.flow_block(direction, s, diags, sp) == 0

    def flow_block(self, direction: int, s: int, diags, sp: tuple[int, int]) -> int:
        """0 when stream s is free over positions sp on every one of `diags`; else a number of
        cycles the job must start later at least to use this stream (a committed flow in the
        way ends at diagonal x1: the job's run of diagonals from d0 must move past it; a
        diagonal moves with the job's start)."""
        a0, a1 = sp
        tget = self.t.streams.get
        mget = self._mine_streams.get if self._mine_streams else None
        k0 = direction * _SK + s
        for d0, d1 in _diag_runs(diags):
            for bucket in range(d0 >> _BUCKET, ((d1 - 1) >> _BUCKET) + 1):
                key = bucket * _DK + k0
                occ = tget(key)
                if occ:
                    for x0, x1, a, b in occ:
                        if x0 < d1 and d0 < x1 and a < a1 and a0 < b:
                            return max(1, x1 - d0)
                occ = mget(key) if mget is not None else None
                if occ:
                    for x0, x1, a, b in occ:
                        if x0 < d1 and d0 < x1 and a < a1 and a0 < b:
                            return 1  # the job's own flow: moves with it
        return 0

    def take_flow(self, direction: int, s: int, diags, sp: tuple[int, int]) -> None:
        """Take stream s over positions sp on every one of `diags` (check flow_free first)."""
        k0 = direction * _SK + s
        mine, flows = self._mine_streams, self.flows
        for d0, d1 in _diag_runs(diags):
            run = (d0, d1, sp[0], sp[1])
            for bucket in range(d0 >> _BUCKET, ((d1 - 1) >> _BUCKET) + 1):
                key = bucket * _DK + k0
                mine[key].append(run)
                flows.append((key, run))

    def snapshot(self):
        """The state to go back to when a choice half-way through a job fails."""
        return (list(self.issue), list(self.reads), list(self.writes), list(self.alus),
                list(self.flows), set(self._mine_issue),
                {k: list(v) for k, v in self._mine_r.items()},
                {k: list(v) for k, v in self._mine_w.items()},
                {k: list(v) for k, v in self._mine_alu.items()},
                {k: list(v) for k, v in self._mine_streams.items()})

    def restore(self, snap) -> None:
        self.skip, self._hints = 1, False
        (self.issue, self.reads, self.writes, self.alus, self.flows, self._mine_issue,
         self._mine_r, self._mine_w, self._mine_alu, ms) = (
            list(snap[0]), list(snap[1]), list(snap[2]), list(snap[3]), list(snap[4]),
            set(snap[5]), {k: list(v) for k, v in snap[6].items()},
            {k: list(v) for k, v in snap[7].items()},
            {k: list(v) for k, v in snap[8].items()}, snap[9])
        self._mine_streams = defaultdict(list, {k: list(v) for k, v in ms.items()})

    def commit(self) -> None:
        t = self.t
        last = t.last
        for _, c in self.issue:
            if c > last:
                last = c
        for _, _, c1 in self.alus:
            last = max(last, c1 - 1)
        for _, _, c1, _ in self.reads:
            last = max(last, c1 - 1)
        for _, _, c1, _ in self.writes:
            last = max(last, c1 - 1)
        t.last = last
        for q, c in self.issue:
            t.issue[q].add(c)
        for sl, c0, c1, b in self.reads:
            t.read_port[sl].add(c0, c1, b)
        for sl, c0, c1, b in self.writes:
            t.write_port[sl].add(c0, c1, b)
        for a, c0, c1 in self.alus:
            t.alu[a].add(c0, c1, 0)
        streams = self.t.streams
        for key, sp in self.flows:
            streams[key].append(sp)
