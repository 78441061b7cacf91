"""The roofline: a lower bound on a program's latency on the machine it was built for.

The bound is the largest of the times the program's work needs on each resource at its peak
rate: MXM multiply-accumulates, weights moved into the MXM (load-weight streams), SRAM reads,
SRAM writes, and stream traffic past one position. The report names the resource that sets the
bound and gives the simulated latency's ratio to it.
"""

from __future__ import annotations

from lpusim.sim.decode import Decoded


def roofline(dec: Decoded, arch, cycles: int) -> dict:
    lanes = arch.lanes
    chips = max(dec.nchips, 1)
    ctr = dec.counters
    # MACs at the MXM rate of each instruction's dtype (planes work in parallel)
    mac_cycles = 0.0
    for code, n in sorted(ctr["mxm_abc_vectors"].items()):
        from isa.dtypes import DTYPE_BY_CODE

        rate = arch.mxm_rate_of(DTYPE_BY_CODE[int(code)].name)
        mac_cycles += n / (rate * arch.mxm_planes * chips)
    weight_bytes = ctr["mxm_weight_bytes"]
    install_cycles = weight_bytes / (arch.mxm_load_streams_max * lanes * arch.mxm_planes * chips)
    read_cycles = ctr["sram_read_bytes"] / (arch.mem_slices * lanes * chips)
    write_cycles = ctr["sram_write_bytes"] / (arch.mem_slices * lanes * chips)
    stream_cycles = ctr["stream_bytes"] / (2 * arch.streams_per_direction * lanes * chips)
    bounds = {"mxm_macs": mac_cycles, "mxm_weight_install": install_cycles,
              "sram_read": read_cycles, "sram_write": write_cycles, "streams": stream_cycles}
    bound_by = max(bounds, key=bounds.get)
    bound_cycles = bounds[bound_by]
    clock = arch.clock_ghz * 1e9
    return {
        "roofline_cycles": bound_cycles,
        "roofline_latency_s": bound_cycles / clock,
        "roofline_bound_by": bound_by,
        "roofline_ratio": cycles / bound_cycles if bound_cycles else float("inf"),
        "roofline_terms_cycles": bounds,
    }
