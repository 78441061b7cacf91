"""Architecture presets: acceptance numbers, validation messages, overrides, floorplan, topology."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from lpusim.arch import LATENCY_CLASSES, Arch, list_presets, load_arch
from lpusim.cli import main
from lpusim.errors import ArchError


def preset_text(name: str) -> str:
    return (resources.files("lpusim") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


def load_edited(tmp_path: Path, old: str, new: str, name: str = "tsp-v1") -> Arch:
    """Load a copy of a bundled preset with the first line matching regex `old` replaced."""
    text, count = re.subn(old, new, preset_text(name), count=1, flags=re.MULTILINE)
    assert count == 1, f"pattern {old!r} not in preset"
    path = tmp_path / "edited.toml"
    path.write_text(text, encoding="utf-8")
    return load_arch(path)


# ---- bundled presets --------------------------------------------------------------------
def test_list_presets():
    assert list_presets() == ["lpx-2026", "tsp-v1"]


def test_tsp_v1_acceptance_numbers():
    a = load_arch()
    assert a.name == "tsp-v1" and load_arch("tsp-v1") == a
    assert round(a.peak_tops("int8"), 1) == 737.3
    assert round(a.peak_tops("fp16"), 1) == 184.3
    assert a.mxm_macs_per_s("int8") == pytest.approx(4 * 320 * 320 * 0.9e9)
    assert a.sram_bytes == 230_686_720
    assert a.sram_mib == 220.0
    assert a.sram_read_bw_tb_s == pytest.approx(25.344)
    assert a.sram_total_bw_tb_s == pytest.approx(50.688)
    assert a.stream_bw_tb_s == pytest.approx(2 * 32 * 320 * 0.9e9 / 1e12)
    assert a.lanes_per_superlane == 16 and a.vector_bytes == 320
    assert a.mem_slices == 88 and a.mxm_planes == 4
    assert a.cycle_ns == pytest.approx(1 / 0.9)
    assert a.link_bytes_per_cycle == pytest.approx(14.0 / 0.9)
    assert a.hop_latency_cycles == 225
    assert a.link_bw_gb_s == 14.0 and a.c2c_total_bw_gb_s == 224.0
    assert a.mxm_install_weights_per_cycle == 16 * 320
    assert a.hardware_dtypes == ("int8", "fp16")
    assert set(a.mxm_dtypes) == {"int8", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp32"}
    assert a.is_emulated("fp32") and not a.is_emulated("int8")
    assert a.host_transfer_us(24_000) == pytest.approx(11.0)
    assert a.mem_words_per_bank == 4096 and a.mem_bank(4095) == 0 and a.mem_bank(4096) == 1


def test_lpx_2026_follows_published_totals():
    a = load_arch("lpx-2026")
    assert a.sram_bytes == pytest.approx(500e6, rel=0.05)
    assert a.sram_total_bw_tb_s == pytest.approx(150, rel=0.05)
    assert a.peak_tops("fp8_e4m3") == pytest.approx(1200, rel=0.05)
    assert a.c2c_links == 96 and a.link_gb_s == 112 / 8
    for d in ("fp8_e4m3", "fp8_e5m2"):
        assert d in a.hardware_dtypes and not a.is_emulated(d)
    assert a.chips_per_node * a.nodes_per_rack == 256


def test_latency_table_has_exactly_the_classes():
    for name in list_presets():
        a = load_arch(name)
        assert tuple(a.latency) == LATENCY_CLASSES
        assert all(isinstance(v, int) and v >= 1 for v in a.latency.values())
        assert a.lat("mem_read") == a.latency["mem_read"]
    with pytest.raises(ArchError, match="unknown latency class 'nope'"):
        load_arch().lat("nope")


@pytest.mark.parametrize("name", ["tsp-v1", "lpx-2026"])
def test_every_value_says_published_or_assumed(name):
    """A value line's comment starts '# published' or '# ASSUMED', matching `assumed`."""
    a = load_arch(name)
    table, seen = "", set()
    in_array = False
    for line in preset_text(name).splitlines():
        if in_array:
            in_array = not line.startswith("]")
            continue
        if m := re.match(r"\[(\w+)\]", line):
            table = m[1]
            continue
        m = re.match(r"(\w+) = ([^#]*?)\s*(#.*)?$", line)
        if not m or m[1] in ("name", "description"):
            continue
        if m[1] == "assumed":
            in_array = not m[2].endswith("]")
            continue
        key = f"{table}.{m[1]}" if table else m[1]
        comment = m[3] or ""
        assert comment.startswith(("# published", "# ASSUMED")), f"{name}: {key} has no source"
        assert a.is_assumed(key) == comment.startswith("# ASSUMED"), f"{name}: {key}"
        seen.add(key)
    assert set(a.assumed) <= seen


def test_arch_is_frozen_hashable_and_json_able():
    a = load_arch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.lanes = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.latency["mem_read"] = 1  # type: ignore[index]
    assert hash(a) == hash(load_arch())
    d = json.loads(json.dumps(a.to_dict()))
    assert d["derived"]["sram_bytes"] == 230_686_720
    assert d["derived"]["mxm"]["fp32"]["emulated"] is True
    assert "latency.mem_read" in d["assumed"]


def test_arch_module_does_not_import_numba():
    code = "import sys, lpusim.arch; sys.exit('numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- validation -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("chip.mxm_planes_per_hemisphere=-1",
         "preset tsp-v1: chip.mxm_planes_per_hemisphere must be a positive integer, got -1"),
        ("latency.mem_read=0", "latency.mem_read must be a positive integer, got 0"),
        ("chip.lanes=true", "chip.lanes must be an integer, got True"),
        ("chip.lanes=3.5", "chip.lanes must be an integer, got 3.5"),
        ("latency.mem_read=abc", "latency.mem_read must be an integer, got 'abc'"),
        ("clock_ghz=\"fast\"", "clock_ghz must be a number, got 'fast'"),
        ("clock_ghz=-0.5", "clock_ghz must be a positive number, got -0.5"),
        ("c2c.hop_latency_ns=nan", "c2c.hop_latency_ns must be a positive number, got nan"),
        ("chip.superlanes=7", "chip.lanes (320) must be a multiple of chip.superlanes (7)"),
        ("chip.mem_banks_per_slice=3", "chip.mem_words_per_slice (8192) must be a multiple"),
        ("system.global_links=10", "system.global_links + system.local_links (10 + 7) exceeds"),
        ("system.chips_per_node=4", "system.local_links (7) must be system.chips_per_node - 1"),
        ("mxm_rate.fp16=0", "mxm_rate.fp16 must be a positive number, got 0"),
        ("mxm_emulated_rate.fp32=-1", "mxm_emulated_rate.fp32 must be a positive number"),
        ("chip.mxm_load_streams_max=33", "chip.mxm_load_streams_max (33) exceeds"),
        ("latency.foo=3", "unknown key 'latency.foo' (valid keys of [latency]: mem_read,"),
        ("mxm_rate.int4=1.0", "unknown key 'mxm_rate.int4' (valid keys of [mxm_rate]: int8,"),
        ("nosuch.key=1", "unknown table 'nosuch'"),
        ("frequency=1", "unknown key 'frequency'"),
        ("chip=3", "[chip] is a table; set one of its keys, e.g. chip.lanes"),
        ("clock_ghz", "expected KEY=VALUE"),
    ],
)  # fmt: skip
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ArchError) as info:
        load_arch("tsp-v1", [override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (r"^mxm_rows = .*$", "", "preset {p}: chip.mxm_rows is missing"),
        (r"^\[chip\]$", "[chip]\nbogus = 1", "chip.bogus is not a known key (valid keys of [chip]"),
        (r"^clock_ghz = .*$", "clock_ghz = 0.9\nspeed = 2", "speed is not a known key"),
        (r"^clock_ghz = .*$", "", "preset {p}: clock_ghz is missing"),
        (r"^lanes = .*$", "lanes = true", "chip.lanes must be an integer, got True"),
        (r"^\[host\]$", "[hostt]", "hostt is not a known key"),
        (r"^    \"c2c.hop_latency_ns\",$", '    "c2c.hop_ns",', "assumed names 'c2c.hop_ns'"),
        (r"^    \"c2c.hop_latency_ns\",$", '    "latency.mem_read",',
         "lists 'latency.mem_read' twice"),
        (r"^lanes = .*$", "lanes = = 3", "invalid TOML"),
        (r"^\[mxm_emulated_rate\]$", "[mxm_emulated_rate]\nfp16 = 0.1",
         "mxm_emulated_rate.fp16 is also a hardware mode"),
    ],
)  # fmt: skip
def test_bad_preset_file_names_the_key(tmp_path, old, new, message):
    with pytest.raises(ArchError) as info:
        load_edited(tmp_path, old, new)
    text = str(info.value)
    assert message.format(p=tmp_path / "edited.toml") in text
    assert "\n" not in text


def test_toml_error_names_file_and_line(tmp_path):
    lines = preset_text("tsp-v1").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("clock_ghz ="))
    with pytest.raises(ArchError, match=rf"edited\.toml: invalid TOML: .*\(at line {line}, column"):
        load_edited(tmp_path, r"^clock_ghz = .*$", "clock_ghz = = 1")


def test_int_is_accepted_where_float_expected(tmp_path):
    a = load_edited(tmp_path, r"^link_gb_s = .*$", "link_gb_s = 14  # published: test")
    assert a.link_gb_s == 14.0 and isinstance(a.link_gb_s, float)


def test_unknown_preset_lists_bundled():
    with pytest.raises(ArchError, match=r"no preset named 'tsp-v9' \(bundled: lpx-2026, tsp-v1\)"):
        load_arch("tsp-v9")


# ---- overrides --------------------------------------------------------------------------
def test_overrides_change_derived_values_and_are_recorded():
    base = load_arch()
    a = load_arch(
        None, ["clock_ghz=1.0", "latency.mem_read=6", "chip.mem_slices_per_hemisphere=100"]
    )
    assert a.overrides == (
        ("clock_ghz", 1.0),
        ("latency.mem_read", 6),
        ("chip.mem_slices_per_hemisphere", 100),
    )
    assert a.peak_tops("int8") == pytest.approx(819.2)
    assert a.lat("mem_read") == 6 and a.mem_slices == 200
    assert a.sram_bytes == 200 * 8192 * 320 and a.num_positions == 205
    assert a.is_assumed("latency.mem_read") and not a.is_assumed("clock_ghz")
    assert a != base and base.peak_tops("int8") == pytest.approx(737.28)


def test_mapping_overrides_and_moving_a_dtype_to_hardware():
    a = load_arch("tsp-v1", {"mxm_rate.fp8_e4m3": 0.5, "c2c.link_gb_s": 28})
    assert "fp8_e4m3" in a.hardware_dtypes and not a.is_emulated("fp8_e4m3")
    assert a.peak_tops("fp8_e4m3") == pytest.approx(737.28 / 2)
    assert a.is_assumed("mxm_emulated_rate.fp8_e4m3")  # answers from the file's list
    assert a.c2c_total_bw_gb_s == 16 * 28.0
    b = load_arch("tsp-v1", ["mxm_emulated_rate.fp16=0.1"])
    assert b.is_emulated("fp16") and b.hardware_dtypes == ("int8",)
    with pytest.raises(ArchError, match="mxm_rate.fp8_e4m3 and mxm_emulated_rate.fp8_e4m3"):
        load_arch("tsp-v1", {"mxm_rate.fp8_e4m3": 0.5, "mxm_emulated_rate.fp8_e4m3": 0.25})
    with pytest.raises(ArchError, match="mxm_rate must name at least one hardware dtype"):
        load_arch("tsp-v1", ["mxm_emulated_rate.fp16=0.1", "mxm_emulated_rate.int8=1"])


def test_unsupported_dtype_is_an_arch_error():
    with pytest.raises(ArchError, match="dtype 'int4' is not supported on the MXM"):
        load_arch().peak_tops("int4")


# ---- floorplan and queues ---------------------------------------------------------------
def test_tsp_v1_queues_and_positions():
    a = load_arch()
    qs = a.queues
    assert a.num_queues == len(qs) == 126
    assert [q.id for q in qs] == list(range(126))
    assert len({q.name for q in qs}) == 126
    assert a.num_positions == 93 and a.vxm_position == 46
    by = a.queue_by_name
    assert by("MEM_W0").position == 45 and by("MEM_E0").position == 47
    assert by("MEM_W43").position == 2 and by("MEM_E43").position == 90
    assert by("MEM_W0").index == 0 and by("MEM_E0").index == 44 and by("MEM_E0").id == 44
    assert by("VXM0").id == 88 and by("VXM15").position == 46 and by("VXM3").hemisphere == "C"
    assert by("MXM0").position == 0 and by("MXM1").position == 0
    assert by("MXM2").position == 92 and by("MXM3").hemisphere == "E"
    assert by("SXM_W").position == 1 and by("SXM_E").position == 91
    assert by("C2C0").position == 1 and by("C2C7").hemisphere == "W"
    assert by("C2C8").position == 91 and by("C2C15").id == 125
    for q in qs:
        assert a.unit_position(q.kind, q.index) == q.position
        assert q.hemisphere == ("C" if q.kind == "VXM" else "W" if q.position < 46 else "E")
    assert a.sxm_position("E") == 91 and a.mxm_position(3) == 92 and a.c2c_position(8) == 91
    with pytest.raises(ArchError, match=r"unknown queue 'MEM_W44' \(queues: MEM_W0..MEM_W43"):
        by("MEM_W44")
    with pytest.raises(ArchError, match="MEM slice 88 out of range 0..87"):
        a.mem_slice_position(88)
    with pytest.raises(ArchError, match="unknown unit kind 'ALU'"):
        a.unit_position("ALU", 0)


def test_positions_are_a_mirrored_floorplan():
    for name in list_presets():
        a = load_arch(name)
        n, last = a.mem_slices_per_hemisphere, a.num_positions - 1
        mem = sorted(a.mem_slice_position(s) for s in range(a.mem_slices))
        assert mem == [p for p in range(2, last - 1) if p != a.vxm_position]
        for k in range(n):
            assert a.mem_slice_position(k) + a.mem_slice_position(n + k) == last


# ---- topology ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tsp-v1", "lpx-2026"])
@pytest.mark.parametrize("num_chips", [1, 2, 8, 16, 72, 400])
def test_link_peer_is_symmetric(name, num_chips):
    a = load_arch(name)
    used = set()
    for chip in range(num_chips):
        for link in range(a.c2c_links):
            peer = a.link_peer(num_chips, chip, link)
            if peer is None:
                continue
            other, other_link = peer
            assert 0 <= other < num_chips and other != chip
            assert 0 <= other_link < a.local_links + a.global_links
            assert a.link_peer(num_chips, other, other_link) == (chip, link)
            used.add((chip, link))
        for link in range(a.local_links + a.global_links, a.c2c_links):
            assert a.link_peer(num_chips, chip, link) is None
    if num_chips == 1:
        assert not used


def test_rack_is_all_to_all_inside_nodes_and_between_nodes():
    a = load_arch()
    chips = a.chips_per_node * a.nodes_per_rack
    node_pairs: dict[tuple[int, int], int] = {}
    for chip in range(chips):
        local_peers = {a.link_peer(chips, chip, link)[0] for link in range(a.local_links)}
        node = chip // 8
        assert local_peers == set(range(node * 8, node * 8 + 8)) - {chip}
        for link in range(a.local_links, a.local_links + a.global_links):
            if (peer := a.link_peer(chips, chip, link)) is not None:
                pair = (node, peer[0] // 8)
                node_pairs[pair] = node_pairs.get(pair, 0) + 1
    assert set(node_pairs) == {(i, j) for i in range(9) for j in range(9) if i != j}
    assert set(node_pairs.values()) == {1}


def test_link_peer_rejects_bad_arguments():
    a = load_arch()
    with pytest.raises(ArchError, match="chip 8 out of range"):
        a.link_peer(8, 8, 0)
    with pytest.raises(ArchError, match="C2C link 16 out of range"):
        a.link_peer(8, 0, 16)


# ---- CLI --------------------------------------------------------------------------------
def run(*args: str):
    return CliRunner().invoke(main, ["arch", *args])


def test_cli_default_preset():
    r = run()
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith("tsp-v1: ")
    assert re.search(r"int8 TOPS\s+737\.3", out) and re.search(r"fp16 TFLOPS\s+184\.3", out)
    assert re.search(r"mem_read\s+4\s+assumed", out)
    assert re.search(r"fp32 TFLOPS .*EMULATED", out)
    assert "230,686,720" in out and re.search(r"sram_mib\s+220\.0", out)
    assert re.search(r"hop_latency_cycles\s+225", out)
    assert "\x1b[" not in out


def test_cli_lpx_and_set():
    r = run("lpx-2026")
    assert r.exit_code == 0 and r.output.startswith("lpx-2026: ")
    assert re.search(r"fp8_e4m3 TFLOPS\s+1228\.8", r.output)
    r = run("--set", "clock_ghz=1.0")
    assert r.exit_code == 0 and re.search(r"int8 TOPS\s+819\.2", r.output)
    assert re.search(r"clock_ghz\s+1\s+set by --set", r.output)


def test_cli_bad_set_is_one_line_error():
    r = run("--set", "chip.lanes=-1")
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert lines == [
        "error: preset tsp-v1: chip.lanes must be a positive integer, got -1 (set by override)"
    ]
    r = run("nope")
    assert r.exit_code == 1 and "no preset named 'nope'" in r.output


def test_cli_json_is_written_atomically(tmp_path):
    path = tmp_path / "arch.json"
    r = run("lpx-2026", "--set", "latency.mem_read=5", "--json", str(path))
    assert r.exit_code == 0, r.output
    d = json.loads(path.read_text())
    assert d["name"] == "lpx-2026" and d["latency"]["mem_read"] == 5
    assert d["overrides"] == {"latency.mem_read": 5}
    assert d["derived"]["sram_bytes"] == load_arch("lpx-2026").sram_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["arch.json"]
    r = run("--json", "-")
    assert json.loads(r.output)["derived"]["mem_slices"] == 88


def test_cli_help_and_list():
    r = run("--help")
    assert r.exit_code == 0 and "--set KEY=VALUE" in r.output and "GHz" in r.output
    assert run("--list").output.split() == ["lpx-2026", "tsp-v1"]
