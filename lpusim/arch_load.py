"""Loading architecture presets: bundled names or TOML files, overrides, validation.

`load_arch` and `arch_from_config` build the one `Arch` (lpusim/arch.py) and fail with an
ArchError naming the key for any invalid value.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from lpusim.arch import (
    _RATE_TABLES,
    _TABLE_ORDER,
    _TABLES,
    _TOP,
    DEFAULT_PRESET,
    MXM_DTYPES,
    Arch,
    FrozenMap,
)
from lpusim.errors import ArchError


# ---- loading --------------------------------------------------------------------------
def list_presets() -> list[str]:
    """Names of the bundled presets."""
    root = resources.files("lpusim") / "presets"
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def load_arch(
    spec: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, object] = (),
) -> Arch:
    """Load a bundled preset by name (default tsp-v1) or a .toml file, apply "key=value"
    overrides (values parsed as TOML), validate, and return the Arch."""
    text, label, source = _read_spec(DEFAULT_PRESET if spec is None else spec)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ArchError(f"{source}: invalid TOML: {exc}") from None
    arch = _build(label, raw, set())
    pairs = _parse_overrides(overrides)
    if pairs:
        raw = copy.deepcopy(raw)
        for key, value in pairs:
            _apply_override(raw, key, value)
        for d in MXM_DTYPES:
            both = [f"{t}.{d}" for t in _RATE_TABLES if any(k == f"{t}.{d}" for k, _ in pairs)]
            if len(both) == 2:
                raise ArchError(
                    f"override {' and '.join(both)}: a dtype is native or emulated, not both"
                )
        raw["assumed"] = list(arch.assumed)  # already checked against the file's own keys
        arch = _build(label, raw, {k for k, _ in pairs}, check_assumed=False)
    return replace(arch, overrides=tuple(pairs), source=source)


def arch_from_config(config: Mapping[str, Any]) -> Arch:
    """Rebuild (and re-validate) an Arch from `Arch.config` data, e.g. from a Program file."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise ArchError("architecture configuration must be a table with a name")
    raw = copy.deepcopy(dict(config))
    return replace(_build(str(raw["name"]), raw, set(), check_assumed=False),
                   source="program file")


def _read_spec(spec: str | Path) -> tuple[str, str, str]:
    """(text, label for messages, source description)."""
    bundled = list_presets()
    if isinstance(spec, str) and spec in bundled:
        res = resources.files("lpusim") / "presets" / f"{spec}.toml"
        return res.read_text(encoding="utf-8"), spec, f"preset {spec}"
    path = Path(spec)
    if not path.is_file():
        raise ArchError(
            f"no preset named {str(spec)!r} (bundled: {', '.join(bundled)}) and no such file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchError(f"{path}: cannot read preset: {exc}") from None
    return text, str(path), str(path)


def _parse_overrides(overrides: Sequence[str] | Mapping[str, object]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return [(str(k), v) for k, v in overrides.items()]
    if isinstance(overrides, str):
        overrides = [overrides]
    pairs = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ArchError(f"override {item!r}: expected KEY=VALUE, e.g. latency.mem_read=6")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word; the type check below names the key if it is wrong
        pairs.append((key, value))
    return pairs


def _apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) == 1:
        if key in _TOP and key != "assumed":
            raw[key] = value
            return
        if key in _TABLES or key in _RATE_TABLES:
            example = next(iter(_TABLES.get(key, {"int8": None})))
            raise ArchError(
                f"override {key}: [{key}] is a table; set one of its keys, e.g. {key}.{example}"
            )
        valid = [k for k in _TOP if k != "assumed"]
        raise ArchError(
            f"override {key}: unknown key {key!r} (top-level keys: {', '.join(valid)}; "
            f"tables: {', '.join(_TABLE_ORDER)})"
        )
    table, leaf = parts[0], ".".join(parts[1:])
    if table in _TABLES:
        valid = list(_TABLES[table])
    elif table in _RATE_TABLES:
        valid = list(MXM_DTYPES)
    else:
        raise ArchError(
            f"override {key}: unknown table {table!r} (tables: {', '.join(_TABLE_ORDER)})"
        )
    if leaf not in valid:
        raise ArchError(
            f"override {key}: unknown key {key!r} (valid keys of [{table}]: {', '.join(valid)})"
        )
    raw.setdefault(table, {})[leaf] = value
    if table in _RATE_TABLES:  # a dtype moves between hardware and emulated
        other = _RATE_TABLES[1 - _RATE_TABLES.index(table)]
        raw.get(other, {}).pop(leaf, None)


class _Checker:
    """Type and range checks that name the key; marks keys that came from overrides."""

    def __init__(self, label: str, overridden: set[str]):
        self.label = label
        self.overridden = overridden

    def fail(self, key: str, message: str) -> ArchError:
        note = " (set by override)" if key in self.overridden else ""
        return ArchError(f"preset {self.label}: {key} {message}{note}")

    def value(self, key: str, v: Any, typ: type) -> Any:
        if typ is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.fail(key, f"must be an integer, got {v!r}")
            if v <= 0:
                raise self.fail(key, f"must be a positive integer, got {v!r}")
            return v
        if typ is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(key, f"must be a number, got {v!r}")
            if not math.isfinite(v) or v <= 0:
                raise self.fail(key, f"must be a positive number, got {v!r}")
            return float(v)
        if typ is str:
            if not isinstance(v, str) or not v.strip():
                raise self.fail(key, f"must be a non-empty string, got {v!r}")
            return v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(key, f"must be an array of dotted key names, got {v!r}")
        return v

    def table(self, raw: dict[str, Any], table: str, valid: Sequence[str], required: bool) -> dict:
        sub = raw.get(table)
        if sub is None:
            raise self.fail(table, "is missing (a [" + table + "] table is required)")
        if not isinstance(sub, dict):
            raise self.fail(table, f"must be a table, got {sub!r}")
        for k in sub:
            if k not in valid:
                raise self.fail(
                    f"{table}.{k}",
                    f"is not a known key (valid keys of [{table}]: {', '.join(valid)})",
                )
        if required:
            for k in valid:
                if k not in sub:
                    raise self.fail(f"{table}.{k}", "is missing")
        return sub


def _build(
    label: str, raw: dict[str, Any], overridden: set[str], check_assumed: bool = True
) -> Arch:
    c = _Checker(label, overridden)
    for k in raw:
        if k not in _TOP and k not in _TABLE_ORDER:
            valid = list(_TOP) + [f"[{t}]" for t in _TABLE_ORDER]
            raise c.fail(k, f"is not a known key (valid top-level keys: {', '.join(valid)})")
    for k, typ in _TOP.items():
        if k not in raw:
            raise c.fail(k, "is missing")
        c.value(k, raw[k], typ)
    kw: dict[str, Any] = {k: c.value(k, raw[k], t) for k, t in _TOP.items() if k != "assumed"}
    for table, schema in _TABLES.items():
        sub = c.table(raw, table, list(schema), required=True)
        values = {k: c.value(f"{table}.{k}", sub[k], t) for k, t in schema.items()}
        if table == "latency":
            kw["latency"] = FrozenMap(values)
        else:
            kw.update(values)
    for table in _RATE_TABLES:
        sub = c.table(raw, table, MXM_DTYPES, required=False)
        kw[table] = FrozenMap({d: c.value(f"{table}.{d}", sub[d], float) for d in sub})
    if not kw["mxm_rate"]:
        raise c.fail("mxm_rate", "must name at least one hardware dtype")
    for d in kw["mxm_emulated_rate"]:
        if d in kw["mxm_rate"]:
            raise c.fail(f"mxm_emulated_rate.{d}", "is also a hardware mode in [mxm_rate]")

    k = kw
    rules = (
        ("chip.lanes", k["lanes"] % k["superlanes"],
         f"({k['lanes']}) must be a multiple of chip.superlanes ({k['superlanes']})"),
        ("chip.mem_words_per_slice", k["mem_words_per_slice"] % k["mem_banks_per_slice"],
         f"({k['mem_words_per_slice']}) must be a multiple of chip.mem_banks_per_slice "
         f"({k['mem_banks_per_slice']})"),
        ("chip.mxm_load_streams_max", k["mxm_load_streams_max"] > k["streams_per_direction"],
         f"({k['mxm_load_streams_max']}) exceeds chip.streams_per_direction"),
        ("chip.sxm_transpose_streams", k["sxm_transpose_streams"] > k["streams_per_direction"],
         f"({k['sxm_transpose_streams']}) exceeds chip.streams_per_direction"),
        ("system.local_links", k["local_links"] != k["chips_per_node"] - 1,
         f"({k['local_links']}) must be system.chips_per_node - 1 ({k['chips_per_node'] - 1}): "
         "nodes are all-to-all"),
        ("system.global_links", k["local_links"] + k["global_links"] > k["c2c_links"],
         f"+ system.local_links ({k['global_links']} + {k['local_links']}) exceeds "
         f"chip.c2c_links ({k['c2c_links']})"),
    )  # fmt: skip
    for key, broken, why in rules:
        if broken:
            raise c.fail(key, why)

    valid_keys = {k for k in _TOP if k not in ("name", "description", "assumed")}
    valid_keys |= {f"{t}.{k}" for t, s in _TABLES.items() for k in s}
    valid_keys |= {f"{t}.{d}" for t in _RATE_TABLES for d in kw[t]}
    assumed = raw["assumed"]
    for k in assumed:
        if check_assumed and k not in valid_keys:
            raise c.fail("assumed", f"names {k!r}, which is not a key of this preset")
    if len(set(assumed)) != len(assumed):
        dup = next(k for k in assumed if assumed.count(k) > 1)
        raise c.fail("assumed", f"lists {dup!r} twice")
    return Arch(**kw, assumed=tuple(assumed))
