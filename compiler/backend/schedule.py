"""Static list scheduling of vector work, and the flows that move vectors between MEM slices
and units on streams. Every placement respects the rules in resources.py, so the emitted
program runs on the simulator without a hazard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from compiler.backend.placement import Placement
from compiler.backend.resources import Reservation, Table, banks_of, cycle_runs, fit, shifted, span
from compiler.errors import CompileError

# Past the last reserved cycle every resource is free, so a job that still does not fit a
# little beyond it (latencies and stream hops) never will.
SEARCH_SLACK = 2048


@dataclass
class Emitted:
    queue: str
    cycle: int
    mnemonic: str
    fields: dict
    op: int = -1  # the IR node it lowers (Scheduler.ops), -1 for none


@dataclass
class Scheduler:
    arch: object
    table: Table = field(default_factory=Table)
    code: list[Emitted] = field(default_factory=list)
    # per MXM plane, across matmuls: (cycle from which its weight buffer may be loaded,
    # cycle after the last activation read of the installed weights, cycle from which its
    # accumulators may be overwritten)
    mxm: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    # the chip's SXM map table (permute and distribute maps), each map once
    maps: list[tuple[int, ...]] = field(default_factory=list)
    # constant tensors the lowering makes (address maps): name -> (placement, data)
    data: dict[str, tuple[Placement, object]] = field(default_factory=dict)
    # constant gather tables, stored in chunks: key -> [(placement, first row, rows)]
    tables: dict[str, list] = field(default_factory=dict)
    # the IR nodes lowered so far, (name, op type); instructions are tagged with the current
    ops: list[tuple[str, str]] = field(default_factory=list)
    op: int = -1

    def __post_init__(self):
        a = self.arch
        self.lat = a.lat
        self.S = a.streams_per_direction
        self.wpb = a.mem_words_per_bank
        self.slice_names = {q.index: q.name for q in a.queues if q.kind == "MEM"}
        self.slice_pos = {q.index: q.position for q in a.queues if q.kind == "MEM"}

    def place(self, earliest: int, build: Callable[[Reservation, int], list[Emitted] | None],
              what: str) -> int:
        """Commit `build` at the first start cycle >= earliest where it fits; return it. A build
        that fails says (Reservation.need) how far the start must move before the resource that
        refused it is free; the cycles in between cannot fit and are not tried."""
        t = max(0, earliest)
        while t <= max(earliest, self.table.last) + SEARCH_SLACK:
            res = Reservation(self.table)
            code = build(res, t)
            if code is not None:
                res.commit()
                if self.op >= 0:
                    for e in code:
                        e.op = self.op
                self.code.extend(code)
                return t
            t += res.skip
        raise CompileError(f"internal: {what} does not fit the machine at any cycle (a "
                           "resource it needs is used twice by itself)")

    def begin_op(self, name: str, op_type: str) -> None:
        """Tag the instructions placed from now on as lowering node `name`."""
        self.ops.append((name, op_type))
        self.op = len(self.ops) - 1

    def map_index(self, m) -> int:
        """The index of an SXM map (one int per lane) in the program's map table."""
        key = tuple(int(v) for v in m)
        if len(key) != self.arch.lanes:
            raise CompileError(f"internal: an SXM map of {len(key)} lanes")
        try:
            return self.maps.index(key)
        except ValueError:
            self.maps.append(key)
            return len(self.maps) - 1

    def toward(self, p: Placement, dest: int) -> int:
        """The stream direction from p's slices to position dest (0 east, 1 west)."""
        pos = [self.slice_pos[s] for s in p.slices]
        if all(q < dest for q in pos):
            return 0
        if all(q > dest for q in pos):
            return 1
        raise CompileError(f"internal: slices {p.slices} lie on both sides of position {dest}")

    def away(self, src: int, p: Placement) -> int:
        """The stream direction from position src to p's slices."""
        return 1 - self.toward(p, src)

    def sxm_for(self, p: Placement) -> tuple[str, int]:
        """The SXM on p's side of the chip (queue name, position)."""
        west = self.toward(p, self.arch.vxm_position) == 0
        hemi = "W" if west else "E"
        return f"SXM_{hemi}", self.arch.sxm_position(hemi)

    def reaches(self, p: Placement, dest: int, ready: int) -> int:
        """The first cycle p's vectors, read from `ready` on, can reach position dest (a job
        streaming them starts no earlier: place() need not try the cycles before)."""
        return max(0, ready) + self.lat("mem_read") + max(abs(dest - self.slice_pos[s])
                                                          for s in p.slices)

    # -- flows --------------------------------------------------------------------------------
    def read_flow(self, res: Reservation, p: Placement, addrs: list[int], arrive: list[int],
                  dest: int, direction: int, not_before: int = 0,
                  base: int | None = None) -> int | None:
        """Stream the vectors at `addrs` of every byte plane of `p` so that vector i reaches
        position `dest` in cycle arrive[i], reading SRAM no earlier than `not_before` (when the
        data is there). Returns the first stream of the group (`base` if given), or None."""
        g = len(p.slices)
        lat = self.lat("mem_read")
        wpb = self.wpb
        floor = max(0, not_before)
        # the cheap checks first: too early, or a port taken; the hint is the least shift
        # that frees every plane's port for every read (fit: the planes' slices lie at
        # different distances, so one plane's hint alone would move the job a cycle at a time
        # past the others')
        reads, items, early = [], [], 0
        for sl in p.slices:
            pos = self.slice_pos[sl]
            if (direction == 0) != (pos < dest):
                raise CompileError("internal: a read flow against the stream direction")
            rcs = shifted(arrive, -lat - abs(dest - pos))
            if len(rcs):
                early = max(early, floor - rcs[0])
            reads.append((pos, rcs))
            items.append((self.table.read_port[sl],
                          rcs if type(rcs) is range and rcs.step > 1 else cycle_runs(rcs)))
        move = fit(items, early)
        if move:
            res.need(move)
            return None
        plans = [(b, sl, rcs, shifted(rcs, lat - pos if direction == 0 else lat + pos),
                  span(direction, pos, dest))
                 for b, (sl, (pos, rcs)) in enumerate(zip(p.slices, reads, strict=True))]
        base = _free_base(res, direction,
                          [base] if base is not None else range(0, self.S - g + 1, g),
                          [(b, diags, sp) for b, _, _, diags, sp in plans])
        if base is None:
            return None
        banks = banks_of(addrs, wpb)
        for b, sl, rcs, diags, sp in plans:
            if not res.take_reads(sl, rcs, banks, free=True):  # the ports checked above
                return None
            res.take_flow(direction, base + b, diags, sp)
        return base

    def read_code(self, res: Reservation, p: Placement, addrs: list[int], arrive: list[int],
                  dest: int, direction: int, base: int) -> list[Emitted] | None:
        """The mem.read instructions for a flow placed by read_flow (runs of consecutive cycles
        and a constant address step become one instruction)."""
        lat = self.lat("mem_read")
        out = []
        for b, sl in enumerate(p.slices):
            pos = self.slice_pos[sl]
            hops = abs(dest - pos)
            code = self._mem_code(res, sl, shifted(arrive, -lat - hops), addrs, "mem.read",
                                  dict(dst=base + b, dst_dir=direction))
            if code is None:
                return None
            out += code
        return out

    def _mem_code(self, res: Reservation, sl: int, cycles: list[int], addrs: list[int],
                  mnemonic: str, stream: dict) -> list[Emitted] | None:
        """One instruction per run of consecutive cycles with a constant address step."""
        q = self.slice_names[sl]
        out = []
        for start, count, stride in _runs(cycles, addrs):
            if not res.take_issue(q, cycles[start]):
                return None
            out.append(Emitted(q, cycles[start], mnemonic,
                               dict(stream, addr=addrs[start], count=count, stride=stride)))
        return out

    def write_flow(self, res: Reservation, p: Placement, addrs: list[int], leave: list[int],
                   src: int, direction: int, base: int, reach: list[int] | None = None,
                   flows: bool = True) -> list[Emitted] | None:
        """Vector i leaves position `src` on streams base.. in cycle leave[i] (its producer
        commits then); write it to `addrs` of every byte plane of `p`. The streams are held
        up to p's slices, or up to reach[b] for plane b (further copies along the way); with
        `flows` False they are not taken at all (another write of the same values holds
        them)."""
        lat = self.lat("mem_write")
        out = []
        for b, sl in enumerate(p.slices):
            pos = self.slice_pos[sl]
            if (direction == 0) != (pos > src):
                raise CompileError("internal: a write flow against the stream direction")
            hops = abs(pos - src)
            diags = _diagonals(direction, src, leave)
            sp = span(direction, src, pos if reach is None else reach[b])
            if flows:
                block = res.flow_block(direction, base + b, diags, sp)
                if block:
                    res.need(block)
                    return None
            if not res.take_writes(sl, shifted(leave, hops + lat), banks_of(addrs, self.wpb)):
                return None
            if flows:
                res.take_flow(direction, base + b, diags, sp)
            code = self._mem_code(res, sl, shifted(leave, hops), addrs, "mem.write",
                                  dict(src=base + b, src_dir=direction))
            if code is None:
                return None
            out += code
        return out

    def free_group(self, res: Reservation, g: int, direction: int, src: int, dests: list[int],
                   leave: list[int], avoid: set[int] = frozenset()) -> int | None:
        """A group of g streams free from position src to the farthest of dests at `leave`."""
        far = min(dests) if direction == 1 else max(dests)
        sp = span(direction, src, far)
        diags = _diagonals(direction, src, leave)
        return _free_base(res, direction,
                          [b for b in range(0, self.S - g + 1, g) if b not in avoid],
                          [(b, diags, sp) for b in range(g)])


def _free_base(res: Reservation, direction: int, bases, flows) -> int | None:
    """The first of `bases` whose streams base + b are free for every (b, diagonals,
    positions) of `flows`; else None, and the least shift that might free one is recorded
    (Reservation.need)."""
    least = None
    for base in bases:
        block = 0
        for b, diags, sp in flows:
            block = res.flow_block(direction, base + b, diags, sp)
            if block:
                break
        if not block:
            return base
        least = block if least is None else min(least, block)
    if least is not None:
        res.need(least)
    return None


def _diagonals(direction: int, position: int, cycles):
    """diagonal(direction, position, t) for every t of cycles."""
    return shifted(cycles, -position) if direction == 0 else shifted(cycles, position)


def _runs(cycles, addrs):
    """Split vectors into runs of consecutive cycles with a constant address step."""
    i, n = 0, len(cycles)
    max_count = (1 << 16) - 1
    if (type(cycles) is range and type(addrs) is range and cycles.step == 1 and 1 < n <= max_count
            and -128 <= addrs.step <= 127):
        yield 0, n, addrs.step
        return
    if 1 < n <= max_count:  # one run: consecutive cycles, one address step
        c0, a0 = cycles[0], addrs[0]
        stride = addrs[1] - a0
        if (-128 <= stride <= 127 and cycles[-1] == c0 + n - 1
                and addrs[-1] == a0 + (n - 1) * stride and cycles == list(range(c0, c0 + n))
                and (addrs == [a0] * n if stride == 0 else
                     addrs == list(range(a0, a0 + n * stride, stride)))):
            yield 0, n, stride
            return
    while i < n:
        j = i + 1
        stride = addrs[j] - addrs[i] if j < n else 1
        while (j < n and cycles[j] == cycles[j - 1] + 1 and addrs[j] - addrs[j - 1] == stride
               and j - i < max_count and -128 <= stride <= 127):
            j += 1
        if j == i + 1:
            stride = 1
        yield i, j - i, stride
        i = j
