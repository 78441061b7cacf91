"""Architecture presets: load a TOML preset, apply overrides, validate, and derive one `Arch`.

A preset is an input, not a fit: every number the simulator reports (peaks, positions, link
peers) is derived here from the preset's values, and the preset says which of them are
published and which are ASSUMED (its top-level `assumed` list).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from isa.table import LATENCY_CLASSES
from lpusim.errors import ArchError

DEFAULT_PRESET = "tsp-v1"

# LATENCY_CLASSES (imported above) are the keys of a preset's [latency] table; the ISA table
# defines them.

# Names follow isa/dtypes.py; a preset may rate any of them, natively or as emulated.
MXM_DTYPES: tuple[str, ...] = ("int8", "fp8_e4m3", "fp8_e5m2", "fp16", "bf16", "fp32")

QUEUE_KINDS: tuple[str, ...] = ("MEM", "VXM", "MXM", "SXM", "C2C")

_CHIP_KEYS = (
    "lanes", "superlanes", "streams_per_direction", "mem_slices_per_hemisphere",
    "mem_words_per_slice", "mem_banks_per_slice", "vxm_alus_per_lane",
    "mxm_planes_per_hemisphere", "mxm_rows", "mxm_cols", "mxm_acc_vectors_per_plane",
    "mxm_load_streams_max", "sxm_transpose_streams", "c2c_links",
)  # fmt: skip

# Fixed tables: key -> type (int or float). Rate tables take any key of MXM_DTYPES.
_TABLES: dict[str, dict[str, type]] = {
    "chip": dict.fromkeys(_CHIP_KEYS, int),
    "latency": dict.fromkeys(LATENCY_CLASSES, int),
    "c2c": {"link_gb_s": float, "hop_latency_ns": float},
    "system": dict.fromkeys(
        ("chips_per_node", "local_links", "global_links", "nodes_per_rack"), int
    ),
    "host": {"pcie_gb_s": float, "host_overhead_us": float},
}
_RATE_TABLES = ("mxm_rate", "mxm_emulated_rate")
_TOP: dict[str, type] = {"name": str, "description": str, "clock_ghz": float, "assumed": list}
_DERIVED = (
    "lanes_per_superlane", "vector_bytes", "mem_slices",
    "mxm_planes", "num_positions", "vxm_position",
    "num_queues", "cycle_ns", "link_bytes_per_cycle",
    "hop_latency_cycles", "sram_bytes", "sram_mib",
    "sram_read_bw_tb_s", "sram_write_bw_tb_s", "sram_total_bw_tb_s",
    "stream_bw_tb_s", "link_bw_gb_s", "c2c_total_bw_gb_s",
    "mxm_install_weights_per_cycle",
)  # fmt: skip
_TABLE_ORDER = ("chip", "mxm_rate", "mxm_emulated_rate", "latency", "c2c", "system", "host")


class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable mapping that keeps insertion order (latencies, dtype rates)."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping[str, Any] | Sequence[tuple[str, Any]] = ()):
        self._d = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(tuple(self._d.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._d) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One in-order instruction queue. `index` counts within its kind (MEM: global slice)."""

    id: int
    name: str
    kind: str
    index: int
    position: int
    hemisphere: str  # "W", "E", or "C" for the VXM in the middle


@dataclass(frozen=True)
class Arch:
    """One validated architecture. Field names are the preset's leaf keys (tables flattened)."""

    name: str
    description: str
    clock_ghz: float
    # [chip]
    lanes: int
    superlanes: int
    streams_per_direction: int
    mem_slices_per_hemisphere: int
    mem_words_per_slice: int
    mem_banks_per_slice: int
    vxm_alus_per_lane: int
    mxm_planes_per_hemisphere: int
    mxm_rows: int
    mxm_cols: int
    mxm_acc_vectors_per_plane: int
    mxm_load_streams_max: int
    sxm_transpose_streams: int
    c2c_links: int
    # [mxm_rate], [mxm_emulated_rate]: dtype -> MACs per cell per cycle relative to int8
    mxm_rate: FrozenMap
    mxm_emulated_rate: FrozenMap
    # [latency]: latency class -> cycles
    latency: FrozenMap
    # [c2c]
    link_gb_s: float
    hop_latency_ns: float
    # [system]
    chips_per_node: int
    local_links: int
    global_links: int
    nodes_per_rack: int
    # [host]
    pcie_gb_s: float
    host_overhead_us: float
    # provenance
    assumed: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    source: str = field(default="", compare=False)

    # ---- provenance -------------------------------------------------------------------
    def is_assumed(self, key: str) -> bool:
        """Whether the preset file lists dotted `key` (e.g. "latency.mem_read") as ASSUMED."""
        return key in self.assumed

    def lat(self, name: str) -> int:
        """Latency of class `name` in cycles."""
        try:
            return self.latency[name]
        except KeyError:
            raise ArchError(
                f"preset {self.name}: unknown latency class {name!r} "
                f"(valid: {', '.join(LATENCY_CLASSES)})"
            ) from None

    # ---- geometry ---------------------------------------------------------------------
    @property
    def lanes_per_superlane(self) -> int:
        return self.lanes // self.superlanes

    @property
    def vector_bytes(self) -> int:
        return self.lanes

    @property
    def mem_slices(self) -> int:
        return 2 * self.mem_slices_per_hemisphere

    @property
    def mem_words_per_bank(self) -> int:
        return self.mem_words_per_slice // self.mem_banks_per_slice

    def mem_bank(self, address: int) -> int:
        """Bank of a MEM address: contiguous blocks of `mem_words_per_bank` (ASSUMED mapping)."""
        return address // self.mem_words_per_bank

    @property
    def mxm_planes(self) -> int:
        return 2 * self.mxm_planes_per_hemisphere

    @property
    def vxm_alus(self) -> int:
        """VXM ALU queues: each drives its ALU in every lane at once."""
        return self.vxm_alus_per_lane

    @property
    def cycle_ns(self) -> float:
        return 1.0 / self.clock_ghz

    def cycles_to_us(self, cycles: float) -> float:
        return cycles / (self.clock_ghz * 1e3)

    @property
    def link_bytes_per_cycle(self) -> float:
        return self.link_gb_s / self.clock_ghz

    @property
    def hop_latency_cycles(self) -> int:
        return math.ceil(self.hop_latency_ns * self.clock_ghz)

    def host_transfer_us(self, nbytes: int) -> float:
        """Host <-> chip time for one transfer: fixed overhead + bytes over PCIe."""
        return self.host_overhead_us + nbytes / (self.pcie_gb_s * 1e3)

    # ---- floorplan: MXM_W, SXM_W, MEM_W{n-1}..MEM_W0, VXM, MEM_E0..MEM_E{n-1}, SXM_E, MXM_E
    @property
    def num_positions(self) -> int:
        return 2 * self.mem_slices_per_hemisphere + 5

    @property
    def vxm_position(self) -> int:
        return self.mem_slices_per_hemisphere + 2

    def mem_slice_position(self, s: int) -> int:
        """Position of global MEM slice s (s < n: MEM_W{s}; else MEM_E{s-n})."""
        n = self.mem_slices_per_hemisphere
        self._check_index("MEM slice", s, self.mem_slices)
        return n + 1 - s if s < n else n + 3 + (s - n)

    def sxm_position(self, hemisphere: str) -> int:
        if hemisphere == "W":
            return 1
        if hemisphere == "E":
            return self.num_positions - 2
        raise ArchError(f"SXM hemisphere must be 'W' or 'E', got {hemisphere!r}")

    def mxm_position(self, plane: int) -> int:
        self._check_index("MXM plane", plane, self.mxm_planes)
        return 0 if plane < self.mxm_planes_per_hemisphere else self.num_positions - 1

    def c2c_position(self, link: int) -> int:
        # ASSUMED: the first half of the links sits at the west SXM, the second half at the east.
        self._check_index("C2C link", link, self.c2c_links)
        return self.sxm_position("W" if link < self.c2c_links // 2 else "E")

    def unit_position(self, kind: str, index: int) -> int:
        """Position of unit `index` of `kind` (MEM: global slice; SXM: 0 = W, 1 = E)."""
        if kind == "MEM":
            return self.mem_slice_position(index)
        if kind == "VXM":
            self._check_index("VXM ALU", index, self.vxm_alus)
            return self.vxm_position
        if kind == "MXM":
            return self.mxm_position(index)
        if kind == "SXM":
            self._check_index("SXM", index, 2)
            return self.sxm_position("WE"[index])
        if kind == "C2C":
            return self.c2c_position(index)
        raise ArchError(f"unknown unit kind {kind!r} (valid: {', '.join(QUEUE_KINDS)})")

    def _check_index(self, what: str, i: int, count: int) -> None:
        if not (isinstance(i, int) and 0 <= i < count):
            raise ArchError(f"preset {self.name}: {what} {i!r} out of range 0..{count - 1}")

    # ---- queues -----------------------------------------------------------------------
    @cached_property
    def queues(self) -> tuple[QueueInfo, ...]:
        """Every instruction queue, in canonical id order: MEM, VXM, MXM, SXM, C2C."""
        n = self.mem_slices_per_hemisphere
        rows: list[tuple[str, str, int, int, str]] = []
        for s in range(self.mem_slices):
            hemi = "W" if s < n else "E"
            rows.append((f"MEM_{hemi}{s % n}", "MEM", s, self.mem_slice_position(s), hemi))
        for a in range(self.vxm_alus):
            rows.append((f"VXM{a}", "VXM", a, self.vxm_position, "C"))
        for p in range(self.mxm_planes):
            hemi = "W" if p < self.mxm_planes_per_hemisphere else "E"
            rows.append((f"MXM{p}", "MXM", p, self.mxm_position(p), hemi))
        for i, hemi in enumerate("WE"):
            rows.append((f"SXM_{hemi}", "SXM", i, self.sxm_position(hemi), hemi))
        for link in range(self.c2c_links):
            hemi = "W" if link < self.c2c_links // 2 else "E"
            rows.append((f"C2C{link}", "C2C", link, self.c2c_position(link), hemi))
        return tuple(QueueInfo(i, *row) for i, row in enumerate(rows))

    @property
    def num_queues(self) -> int:
        return len(self.queues)

    @cached_property
    def _queue_index(self) -> dict[str, QueueInfo]:
        return {q.name: q for q in self.queues}

    def queue_by_name(self, name: str) -> QueueInfo:
        try:
            return self._queue_index[name]
        except KeyError:
            n = self.mem_slices_per_hemisphere
            raise ArchError(
                f"preset {self.name}: unknown queue {name!r} (queues: MEM_W0..MEM_W{n - 1}, "
                f"MEM_E0..MEM_E{n - 1}, VXM0..VXM{self.vxm_alus - 1}, "
                f"MXM0..MXM{self.mxm_planes - 1}, SXM_W, SXM_E, C2C0..C2C{self.c2c_links - 1})"
            ) from None

    # ---- topology ---------------------------------------------------------------------
    def link_peer(self, num_chips: int, chip: int, link: int) -> tuple[int, int] | None:
        """The (chip, link) at the other end of `link` of `chip`, or None if unconnected.

        Chips are numbered node * chips_per_node + local. Local links make each node
        all-to-all. Global links (ASSUMED wiring, symmetric by construction): a node's global
        ports are numbered port = g * chips_per_node + local (g = link - local_links), so the
        first global link of every chip is used before any second one. With N nodes and
        P ports per node:
          N <= P + 1: node-level all-to-all; port p of node i goes to node j = (i + p + 1) % N
                      and arrives on port (i - j) % N - 1 (ports p >= N - 1 stay unconnected);
          N >  P + 1: a circulant; port p < P/2 goes to node i + p + 1 and arrives on port
                      p + P/2, port P/2 + k goes to node i - k - 1 and arrives on port k.
        """
        if not (isinstance(num_chips, int) and num_chips >= 1):
            raise ArchError(f"number of chips must be a positive integer, got {num_chips!r}")
        if not (isinstance(chip, int) and 0 <= chip < num_chips):
            raise ArchError(f"chip {chip!r} out of range 0..{num_chips - 1}")
        self._check_index("C2C link", link, self.c2c_links)
        cpn = self.chips_per_node
        node, local = divmod(chip, cpn)
        if link < self.local_links:
            peer_local = (local + link + 1) % cpn
            peer = node * cpn + peer_local
            return (peer, (local - peer_local) % cpn - 1) if peer < num_chips else None
        g = link - self.local_links
        if g >= self.global_links:
            return None
        num_nodes = -(-num_chips // cpn)
        ports = cpn * self.global_links
        port = g * cpn + local
        if num_nodes <= ports + 1:
            if port >= num_nodes - 1:
                return None
            peer_node = (node + port + 1) % num_nodes
            peer_port = (node - peer_node) % num_nodes - 1
        else:
            half = ports // 2
            if port < half:
                peer_node, peer_port = (node + port + 1) % num_nodes, port + half
            elif port < 2 * half:
                peer_node, peer_port = (node - (port - half) - 1) % num_nodes, port - half
            else:
                return None
        peer_g, peer_local = divmod(peer_port, cpn)
        peer = peer_node * cpn + peer_local
        return (peer, self.local_links + peer_g) if peer < num_chips else None

    # ---- peaks ------------------------------------------------------------------------
    @property
    def hardware_dtypes(self) -> tuple[str, ...]:
        return tuple(self.mxm_rate)

    @property
    def mxm_dtypes(self) -> tuple[str, ...]:
        """Every dtype the MXM accepts: hardware modes first, then emulated ones."""
        return tuple(self.mxm_rate) + tuple(self.mxm_emulated_rate)

    def is_emulated(self, dtype: str) -> bool:
        self.mxm_rate_of(dtype)
        return dtype not in self.mxm_rate

    def mxm_rate_of(self, dtype: str) -> float:
        if dtype in self.mxm_rate:
            return self.mxm_rate[dtype]
        if dtype in self.mxm_emulated_rate:
            return self.mxm_emulated_rate[dtype]
        raise ArchError(
            f"preset {self.name}: dtype {dtype!r} is not supported on the MXM "
            f"(hardware: {', '.join(self.hardware_dtypes)}; "
            f"emulated: {', '.join(self.mxm_emulated_rate) or 'none'})"
        )

    def mxm_macs_per_s(self, dtype: str) -> float:
        cells = self.mxm_planes * self.mxm_rows * self.mxm_cols
        return cells * self.mxm_rate_of(dtype) * self.clock_ghz * 1e9

    def peak_tops(self, dtype: str) -> float:
        """Peak tera-operations (TOPS, or TFLOPS for float dtypes) per second; a MAC is 2 ops."""
        return 2.0 * self.mxm_macs_per_s(dtype) / 1e12

    @property
    def mxm_install_weights_per_cycle(self) -> int:
        """Weights one LW moves from streams into a plane's buffer per cycle."""
        return self.mxm_load_streams_max * self.vector_bytes

    @property
    def sram_bytes(self) -> int:
        return self.mem_slices * self.mem_words_per_slice * self.vector_bytes

    @property
    def sram_mib(self) -> float:
        return self.sram_bytes / 2**20

    @property
    def sram_read_bw_tb_s(self) -> float:
        """One vector read per slice per cycle."""
        return self.mem_slices * self.vector_bytes * self.clock_ghz * 1e9 / 1e12

    @property
    def sram_write_bw_tb_s(self) -> float:
        """One vector written per slice per cycle (to the other bank)."""
        return self.sram_read_bw_tb_s

    @property
    def sram_total_bw_tb_s(self) -> float:
        return self.sram_read_bw_tb_s + self.sram_write_bw_tb_s

    @property
    def stream_bw_tb_s(self) -> float:
        """Bandwidth past one position: both directions, all streams, one vector each."""
        return 2 * self.streams_per_direction * self.vector_bytes * self.clock_ghz * 1e9 / 1e12

    @property
    def link_bw_gb_s(self) -> float:
        """Per link, per direction."""
        return self.link_gb_s

    @property
    def c2c_total_bw_gb_s(self) -> float:
        """All links, per direction."""
        return self.c2c_links * self.link_gb_s

    # ---- export -----------------------------------------------------------------------
    def tables(self) -> dict[str, Any]:
        """The preset's values in its TOML layout (top-level keys, then one dict per table)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "clock_ghz": self.clock_ghz,
        }
        for table in _TABLE_ORDER:
            if table in _RATE_TABLES or table == "latency":
                out[table] = dict(getattr(self, table))
            else:
                out[table] = {k: getattr(self, k) for k in _TABLES[table]}
        return out

    @property
    def config(self) -> dict[str, Any]:
        """The resolved preset as plain JSON-able data; `arch_from_config` rebuilds the Arch.
        Programs carry it, so a Program file runs the same wherever it is loaded."""
        out = self.tables()
        out["assumed"] = list(self.assumed)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: values, provenance and derived quantities (units in the names)."""
        out = self.tables()
        out["source"] = self.source
        out["assumed"] = list(self.assumed)
        out["overrides"] = {k: v for k, v in self.overrides}
        out["derived"] = {k: getattr(self, k) for k in _DERIVED}
        out["derived"]["mxm"] = {
            d: {
                "emulated": self.is_emulated(d),
                "macs_per_s": self.mxm_macs_per_s(d),
                "peak_tops": self.peak_tops(d),
            }
            for d in self.mxm_dtypes
        }
        return out


# The loader and its validation live in arch_load.py; import them from here.
from lpusim.arch_load import arch_from_config, list_presets, load_arch  # noqa: E402,F401
