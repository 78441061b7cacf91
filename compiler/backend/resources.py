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


@dataclass
class Table:
    issue: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    read_port: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    write_port: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    alu: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    # (direction, stream, bucket) as one int key -> runs (d0, d1, first position, end)
    streams: dict[int, list[tuple[int, int, int, int]]] = field(
        default_factory=lambda: defaultdict(list))
    last: int = 0  # the latest cycle any reservation touches


class Reservation:
    """Resources a job would take if placed at one start cycle; check as you add."""

    def __init__(self, table: Table):
        self.t = table
        self.issue: list[tuple[str, int]] = []
        self.reads: list[tuple[int, int, int]] = []
        self.writes: list[tuple[int, int, int]] = []
        self.alus: list[tuple[int, int]] = []
        self.flows: list[tuple[int, tuple[int, int, int, int]]] = []
        self._mine_issue: set[tuple[str, int]] = set()
        self._mine_r: dict[tuple[int, int], int] = {}
        self._mine_w: dict[tuple[int, int], int] = {}
        self._mine_alu: set[tuple[int, int]] = set()
        self._mine_streams: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
        # when the job does not fit: how far its start must move at least before the resource
        # that refused it is free (every cycle of a job moves with its start)
        self.skip = 1
        self._hints = True  # off once a choice was undone: its hint need not bind the others

    def need(self, delta: int) -> None:
        """Record that the job cannot fit unless it starts at least `delta` cycles later."""
        if self._hints:
            self.skip = max(self.skip, delta)

    def need_free(self, busy, cycle: int) -> None:
        """Record the shift to the first cycle >= `cycle` that is not in `busy`."""
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

    def take_read(self, sl: int, cycle: int, bank: int) -> bool:
        return self._take_port(sl, (cycle,), (bank,), False)

    def take_reads(self, sl: int, cycles, banks) -> bool:
        """take_read of every (cycle, bank), in order; False at the first that fails."""
        return self._take_port(sl, cycles, banks, False)

    def take_writes(self, sl: int, cycles, banks) -> bool:
        """take_write of every (cycle, bank), in order; False at the first that fails."""
        return self._take_port(sl, cycles, banks, True)

    def _take_port(self, sl: int, cycles, banks, write: bool) -> bool:
        t = self.t
        busy, other = (t.write_port[sl], t.read_port[sl]) if write else \
            (t.read_port[sl], t.write_port[sl])
        mine, mine_other = (self._mine_w, self._mine_r) if write else (self._mine_r, self._mine_w)
        taken = self.writes if write else self.reads
        for cycle, bank in zip(cycles, banks, strict=True):
            if cycle < 0:
                self.need(-cycle)
                return False
            if cycle in busy:
                self.need_free(busy, cycle)
                return False
            key = (sl, cycle)
            if key in mine:
                return False
            o = other.get(cycle)
            if o is None:
                o = mine_other.get(key)
            # a gather's read (ALL_BANKS) conflicts with a write to any bank
            if o is not None and (o == bank or o == ALL_BANKS or bank == ALL_BANKS):
                return False
            mine[key] = bank
            taken.append((sl, cycle, bank))
        return True

    def take_alu(self, alu: int, cycle: int) -> bool:
        if cycle in self.t.alu[alu]:
            self.need_free(self.t.alu[alu], cycle)
            return False
        if (alu, cycle) in self._mine_alu:
            return False
        self._mine_alu.add((alu, cycle))
        self.alus.append((alu, cycle))
        return True

    def flow_free(self, direction: int, s: int, diags, sp: tuple[int, int]) -> bool:
        """Is stream s free over positions sp on every one of `diags`?"""
        a0, a1 = sp
        tget, mget = self.t.streams.get, self._mine_streams.get
        k0 = direction * _SK + s
        for d0, d1 in _diag_runs(diags):
            for bucket in range(d0 >> _BUCKET, ((d1 - 1) >> _BUCKET) + 1):
                key = bucket * _DK + k0
                for occ in (tget(key), mget(key)):
                    if occ:
                        for x0, x1, a, b in occ:
                            if x0 < d1 and d0 < x1 and a < a1 and a0 < b:
                                return False
        return True

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
                list(self.flows), set(self._mine_issue), dict(self._mine_r),
                dict(self._mine_w), set(self._mine_alu),
                {k: list(v) for k, v in self._mine_streams.items()})

    def restore(self, snap) -> None:
        self.skip, self._hints = 1, False
        (self.issue, self.reads, self.writes, self.alus, self.flows, self._mine_issue,
         self._mine_r, self._mine_w, self._mine_alu, ms) = (
            list(snap[0]), list(snap[1]), list(snap[2]), list(snap[3]), list(snap[4]),
            set(snap[5]), dict(snap[6]), dict(snap[7]), set(snap[8]), snap[9])
        self._mine_streams = defaultdict(list, {k: list(v) for k, v in ms.items()})

    def commit(self) -> None:
        cycles = [c for _, c in self.issue] + [c for _, c, _ in self.reads] + \
            [c for _, c, _ in self.writes] + [c for _, c in self.alus]
        t = self.t
        if cycles:
            t.last = max(t.last, max(cycles))
        for q, c in self.issue:
            t.issue[q].add(c)
        for sl, c, b in self.reads:
            t.read_port[sl][c] = b
        for sl, c, b in self.writes:
            t.write_port[sl][c] = b
        for a, c in self.alus:
            t.alu[a].add(c)
        streams = self.t.streams
        for key, sp in self.flows:
            streams[key].append(sp)
