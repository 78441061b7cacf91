"""`lpusim arch`: show an architecture preset, its derived peaks, and which values are assumed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lpusim.arch import Arch, list_presets, load_arch
from lpusim.cli import main
from lpusim.fileio import write_json_atomic


def _mark(arch: Arch, key: str) -> str:
    notes = ["assumed"] if arch.is_assumed(key) else []
    if any(k == key for k, _ in arch.overrides):
        notes.append("set by --set")
    return "; ".join(notes)


def arch_report(arch: Arch) -> list[tuple[str, str, str]]:
    """Rows (quantity, value, note) of the readable report; sections have empty values."""
    rows: list[tuple[str, str, str]] = []

    def section(title: str) -> None:
        rows.append((f"[{title}]", "", ""))

    def row(label: str, value: object, note: str = "") -> None:
        rows.append((label, str(value), note))

    rows.append((f"{arch.name}: {arch.description}", "", ""))
    rows.append((f"from {arch.source}", "", ""))
    section("clock")
    row("clock_ghz", f"{arch.clock_ghz:g}", _mark(arch, "clock_ghz"))
    row("cycle_ns", f"{arch.cycle_ns:.4g}")

    section("chip")
    for key, value in arch.tables()["chip"].items():
        row(key, value, _mark(arch, f"chip.{key}"))
    row("lanes_per_superlane", arch.lanes_per_superlane, "derived")
    row("mem_slices", arch.mem_slices, "derived")
    row("mxm_planes", arch.mxm_planes, "derived")
    row("num_positions", arch.num_positions, f"derived; VXM at {arch.vxm_position}")
    row("num_queues", arch.num_queues, "derived")

    section("latency (cycles)")
    for key, value in arch.latency.items():
        row(key, value, _mark(arch, f"latency.{key}"))

    section("MXM peak")
    for dtype in arch.mxm_dtypes:
        table = "mxm_emulated_rate" if arch.is_emulated(dtype) else "mxm_rate"
        notes = ["EMULATED (not a hardware mode)"] if arch.is_emulated(dtype) else []
        if arch.is_assumed(f"{table}.{dtype}"):
            notes.append("assumed rate")
        unit = "TFLOPS" if dtype.startswith(("fp", "bf")) else "TOPS"
        row(
            f"{dtype} MAC/s",
            f"{arch.mxm_macs_per_s(dtype):.4g}",
            f"rate {arch.mxm_rate_of(dtype):g}",
        )
        row(f"{dtype} {unit}", f"{arch.peak_tops(dtype):.1f}", "; ".join(notes))
    row("mxm_install_weights_per_cycle", arch.mxm_install_weights_per_cycle, "per LW, one plane")

    section("SRAM and streams")
    row("sram_bytes", f"{arch.sram_bytes:,}")
    row("sram_mib", f"{arch.sram_mib:.1f}")
    row("sram_read_bw_tb_s", f"{arch.sram_read_bw_tb_s:.2f}", "one vector per slice per cycle")
    row("sram_write_bw_tb_s", f"{arch.sram_write_bw_tb_s:.2f}", "one vector per slice per cycle")
    row("sram_total_bw_tb_s", f"{arch.sram_total_bw_tb_s:.2f}", "read + write")
    row("stream_bw_tb_s", f"{arch.stream_bw_tb_s:.2f}", "past one position, both directions")

    section("chip-to-chip and host")
    row("c2c_links", arch.c2c_links, _mark(arch, "chip.c2c_links"))
    row("link_bw_gb_s", f"{arch.link_bw_gb_s:g}", "per link per direction")
    row("c2c_total_bw_gb_s", f"{arch.c2c_total_bw_gb_s:g}", "all links, per direction")
    row("link_bytes_per_cycle", f"{arch.link_bytes_per_cycle:.3f}")
    row("hop_latency_ns", f"{arch.hop_latency_ns:g}", _mark(arch, "c2c.hop_latency_ns"))
    row("hop_latency_cycles", arch.hop_latency_cycles, "ceil(ns x GHz)")
    for key, value in arch.tables()["system"].items():
        row(key, value, _mark(arch, f"system.{key}"))
    row("pcie_gb_s", f"{arch.pcie_gb_s:g}", _mark(arch, "host.pcie_gb_s"))
    row("host_overhead_us", f"{arch.host_overhead_us:g}", _mark(arch, "host.host_overhead_us"))
    return rows


def format_report(rows: list[tuple[str, str, str]]) -> str:
    """Plain aligned text: section headers and free lines as-is, then label, value, note."""
    width = max(len(label) for label, value, _ in rows if value)
    vwidth = max(len(value) for _, value, _ in rows)
    lines = []
    for label, value, note in rows:
        if not value:
            lines.append(f"\n{label}" if label.startswith("[") else label)
        else:
            lines.append(f"  {label:<{width}}  {value:>{vwidth}}  {note}".rstrip())
    return "\n".join(lines).lstrip("\n")


@main.command("arch")
@click.argument("preset", required=False, metavar="[NAME|FILE]")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one preset value; repeatable. KEY is dotted as in the TOML file and carries "
    "its unit, e.g. clock_ghz=1.0 (GHz), latency.mem_read=6 (cycles), c2c.link_gb_s=28 (GB/s "
    "per direction), chip.mem_slices_per_hemisphere=100 (slices). VALUE is a TOML value.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also write the preset, assumed keys and derived peaks (units in the key names: "
    "_tb_s = TB/s, _gb_s = GB/s, _ns, _bytes, _mib) as JSON to FILE, atomically; '-' = stdout.",
)
@click.option("--list", "list_only", is_flag=True, help="List the bundled presets and exit.")
def arch_command(
    preset: str | None, overrides: tuple[str, ...], json_path: Path | None, list_only: bool
) -> None:
    """Show an architecture preset and what follows from it.

    NAME is a bundled preset (default tsp-v1); FILE is a preset .toml file. Prints clock (GHz),
    geometry, per-unit latencies (cycles; "assumed" where the value is not published), MXM
    peaks (MAC/s, TOPS or TFLOPS; emulated dtypes flagged), SRAM size (bytes, MiB) and
    bandwidth (TB/s), stream bandwidth (TB/s), chip-to-chip links (GB/s per direction, hop
    latency in ns and cycles) and the host link (GB/s, us).
    """
    if list_only:
        for name in list_presets():
            click.echo(name)
        return
    arch = load_arch(preset, overrides)
    if json_path is not None and str(json_path) == "-":
        click.echo(json.dumps(arch.to_dict(), indent=2))
        return
    click.echo(format_report(arch_report(arch)))
    if json_path is not None:
        write_json_atomic(json_path, arch.to_dict())
        click.echo(f"wrote {json_path}", err=True)
