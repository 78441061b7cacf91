"""Program-level assembler and disassembler: assembly text <-> lpusim.program.Program.

Syntax, one statement per line:

    ; comment to end of line
    .arch tsp-v1              ; optional, first: a bundled preset name or a .toml path
                              ; (relative to base_dir); the `arch` argument, if given, wins
    .set latency.mem_read=6   ; an arch override (repeatable; values read as TOML)
    .chips 2                  ; number of chips (default 1)
    .chip 1                   ; following .queue/.map/.tensor lines belong to chip 1 (default 0)
    .map 0 permute 319..0     ; SXM map table entry INDEX of this chip: comma-separated ints and
                              ; inclusive ranges a..b (ascending or descending), -1 allowed
                              ; (distribute maps); exactly `lanes` entries; an optional word
                              ; before the entries (permute, distribute) is a note for readers
    .tensor x input int8 [4,320] slices=MEM_W0 addr=0 stride=1 data=x.npy
              ; NAME KIND(input|output|weight|const) DTYPE [shape] slices=one MEM queue per byte
              ; of the dtype (comma-separated), addr=A, stride=S (default 1), data=FILE.npy
              ; (relative to base_dir; cast to the dtype; the shape must match). A name or path
              ; with spaces is written in double quotes.
    .queue MEM_W0             ; following instructions go to this queue of the current chip
    mem.read E0, 0, count=4   ; issues at the queue's next free cycle
    @10 mem.read E1, 4        ; issues at cycle 10: the assembler inserts nops to get there

`.arch`, `.set` and `.chips` come before every other line. Instruction syntax is isa.asm's.

Queue timing: every instruction takes one issue cycle, `nop N` N cycles, `repeat N, D` N*D
cycles. `@C` may not lie before the queue's next free cycle, nor follow a `sync` in the same
queue (the issue cycle is then known only at run time). An instruction's unit must match the
queue's kind; ICU instructions (nop, repeat, sync, notify) run on any queue.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from isa.asm import disassemble_instruction
from isa.encoding import decode, from_words
from lpusim.program import Program

_NOT_OVERRIDABLE = ("name", "assumed", "overrides", "source", "derived")

# ---------------------------------------------------------------- arch config


def _arch_config(arch) -> dict:
    """The JSON-able resolved preset stored in Program.arch_config."""
    config = getattr(arch, "config", None)
    if config is not None:
        return config
    # Arch.config does not exist yet: the preset's values in TOML layout, plus provenance
    out = json.loads(json.dumps(arch.tables()))
    out["assumed"] = list(arch.assumed)
    out["overrides"] = {k: v for k, v in arch.overrides}
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if not prefix and k in _NOT_OVERRIDABLE:
            continue
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def _config_overrides(config: dict) -> list[str]:
    """`key=value` overrides that turn the bundled preset config["name"] into `config`."""
    from lpusim.arch import load_arch

    base = _flatten(_arch_config(load_arch(config.get("name"), ())))
    mine = _flatten(config)
    return [f"{k}={_toml_value(v)}" for k, v in mine.items() if k not in base or base[k] != v]


def _arch_from_config(config: dict):
    from lpusim.arch import Arch, load_arch

    from_config = getattr(Arch, "from_config", None)
    if from_config is not None:
        return from_config(config)
    return load_arch(config.get("name"), _config_overrides(config))


def _quote(text: str) -> str:
    if not text or any(c.isspace() or c in ';"' for c in text) or text[0] == "[":
        return json.dumps(text)
    return text


def issue_cycles(word: int) -> int:
    """Cycles a queue spends issuing `word` (nop N: N, repeat N, D: N*D, others 1)."""
    row, v = decode(word)
    if row.mnemonic == "nop":
        return v["imm"]
    if row.mnemonic == "repeat":
        return v["imm"] * v["aux"]
    return 1


def assemble(
    text: str,
    *,
    source: str = "<asm>",
    arch=None,
    overrides: Sequence[str] = (),
    base_dir: str | Path | None = None,
) -> Program:
    """Assemble program text into a Program. Errors raise AsmError (source:line:column).

    `arch` (a preset name, a .toml path or an Arch) wins over the text's `.arch`; `overrides`
    ("key=value") apply after the text's `.set` lines.
    """
    from lpusim.asm_parse import _Assembler

    return _Assembler(source, arch, overrides, base_dir).run(text)


# ---------------------------------------------------------------- disassembling


def _runs(row: np.ndarray) -> str:
    """Map entries with runs of 3+ consecutive lanes (either direction) as a..b ranges."""
    vals = [int(v) for v in row]
    out: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        if vals[i] >= 0 and i + 1 < len(vals) and abs(vals[i + 1] - vals[i]) == 1:
            step = vals[i + 1] - vals[i]
            while j + 1 < len(vals) and vals[j + 1] - vals[j] == step and vals[j + 1] >= 0:
                j += 1
        if j - i >= 2:
            out.append(f"{vals[i]}..{vals[j]}")
            i = j + 1
        else:
            out.append(str(vals[i]))
            i += 1
    return ",".join(out)


def disassemble(program: Program) -> str:
    """Program -> text that assembles back to an equal Program (tensor data excepted)."""
    config = program.arch_config
    arch = _arch_from_config(config)
    lines = [f".arch {_quote(str(config.get('name', arch.name)))}"]
    lines += [f".set {s}" for s in _config_overrides(config)]
    lines.append(f".chips {len(program.chips)}")
    by_slice = {q.index: q.name for q in arch.queues if q.kind == "MEM"}
    order = [q.name for q in arch.queues]
    for ci, chip in enumerate(program.chips):
        lines += ["", f".chip {ci}"]
        for i, row in enumerate(np.asarray(chip.maps)):
            lines.append(f".map {i} {_runs(row)}")
        for t in program.tensors:
            if t.chip != ci:
                continue
            shape = "[" + ",".join(str(d) for d in t.shape) + "]"
            slices = ",".join(by_slice[s] for s in t.slices)
            text = (
                f".tensor {_quote(t.name)} {t.kind} {t.dtype} {shape} slices={slices} addr={t.addr}"
            )
            if t.stride != 1:
                text += f" stride={t.stride}"
            if t.data is not None:
                text += f"  ; data: {np.asarray(t.data).nbytes} bytes embedded in the program"
            lines.append(text)
        names = sorted(chip.queues, key=lambda n: order.index(n) if n in order else len(order))
        for name in names:
            lines.append(f".queue {name}")
            cycle: int | None = 0
            for word in from_words(chip.queues[name]):
                text = disassemble_instruction(word)
                if cycle is None:
                    lines.append(f"    {text}")
                    continue
                lines.append(f"    {text:<44} ; @{cycle}")
                cycle = None if decode(word)[0].mnemonic == "sync" else cycle + issue_cycles(word)
    return "\n".join(lines) + "\n"


__all__ = ["assemble", "disassemble", "issue_cycles"]
