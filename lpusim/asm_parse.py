"""The line-by-line parser behind lpusim.asm.assemble (the syntax is in lpusim/asm.py)."""

from __future__ import annotations

import difflib
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from isa.asm import assemble_instruction
from isa.dtypes import DTYPE_BY_NAME, numpy_dtype
from isa.encoding import decode, encode, to_words
from isa.fields import FIELDS
from lpusim.asm import _arch_config, issue_cycles
from lpusim.errors import AsmError, LpusimError
from lpusim.program import TENSOR_KINDS, ChipProgram, Program, TensorSpec

_HEADER = (".arch", ".set", ".chips")
_DIRECTIVES = (*_HEADER, ".chip", ".queue", ".map", ".tensor")
_CYCLE_RE = re.compile(r"@(\d+)")
_INT_RE = re.compile(r"^-?(?:0[xX][0-9a-fA-F]+|\d+)$")
_RANGE_RE = re.compile(r"^(-?\d+)\s*\.\.\s*(-?\d+)$")
_TENSOR_KEYS = ("slices", "addr", "stride", "data")


# ---------------------------------------------------------------- lexing


@dataclass(frozen=True)
class _Tok:
    text: str
    col: int  # 1-based


def _code_end(line: str) -> int:
    """Index of the ';' that starts the comment (outside double quotes), or len(line)."""
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ";" and not quoted:
            return i
        i += 1
    return len(line)


def _lex(code: str) -> list[_Tok]:
    """Whitespace-separated tokens; [...] and "..." may hold spaces."""
    toks: list[_Tok] = []
    i, n = 0, len(code)
    while i < n:
        if code[i].isspace():
            i += 1
            continue
        start = i
        while i < n and not code[i].isspace():
            if code[i] == "[":
                j = code.find("]", i)
                i = n if j < 0 else j + 1
            elif code[i] == '"':
                i += 1
                while i < n and code[i] != '"':
                    i += 2 if code[i] == "\\" else 1
                i += 1
            else:
                i += 1
        toks.append(_Tok(code[start:i], start + 1))
    return toks


def _unquote(text: str) -> str | None:
    if text.startswith('"'):
        try:
            v = json.loads(text)
        except ValueError:
            return None
        return v if isinstance(v, str) else None
    return text


# ---------------------------------------------------------------- assembling


@dataclass
class _Queue:
    words: list[int] = field(default_factory=list)
    cycle: int | None = 0  # next free issue cycle; None after a sync


@dataclass
class _Chip:
    queues: dict[str, _Queue] = field(default_factory=dict)
    maps: dict[int, tuple[np.ndarray, int, int]] = field(default_factory=dict)  # idx->(row, l, c)


class _Assembler:
    def __init__(self, source: str, arch, overrides: Sequence[str], base_dir):
        self.source = source
        self.arch_arg = arch
        self.cli_overrides = list(overrides)
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.arch = None
        self.arch_spec: tuple[str | Path, int, int] | None = None  # spec, line, col
        self.sets: list[tuple[str, int, int]] = []
        self.n_chips = 1
        self.chips_seen = False
        self.chip = 0
        self.chips: list[_Chip] = []
        self.queue: str | None = None
        self.tensors: list[TensorSpec] = []
        self.tensor_names: set[str] = set()
        self.line = 0

    def err(self, msg: str, col: int) -> AsmError:
        return AsmError(msg, self.line, col, self.source)

    def _path(self, text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() or self.base_dir is None else self.base_dir / p

    # ---- arch
    def load(self) -> None:
        if self.arch is not None:
            return
        from lpusim.arch import load_arch

        sets = [s for s, _, _ in self.sets]
        if self.arch_arg is not None and hasattr(self.arch_arg, "queues"):  # an Arch object
            if sets or self.cli_overrides:
                raise AsmError(
                    "overrides cannot apply to an Arch object; pass a preset name or path as arch",
                    self.sets[0][1] if self.sets else 1,
                    1,
                    self.source,
                )
            self.arch = self.arch_arg
        elif self.arch_arg is not None:
            try:
                load_arch(self.arch_arg, sets)
            except LpusimError as exc:
                self._blame_sets(self.arch_arg, exc)
            self.arch = load_arch(self.arch_arg, sets + self.cli_overrides)
        else:
            spec, line, col = self.arch_spec or (None, 0, 0)
            try:
                load_arch(spec, ())
            except LpusimError as exc:
                raise AsmError(str(exc), line or 1, col or 1, self.source) from None
            try:
                load_arch(spec, sets)
            except LpusimError as exc:
                self._blame_sets(spec, exc)
            self.arch = load_arch(spec, sets + self.cli_overrides)
        self.chips = [_Chip() for _ in range(self.n_chips)]

    def _blame_sets(self, spec, exc: LpusimError) -> None:
        """Raise the error at the first .set line that makes `spec` fail to load."""
        from lpusim.arch import load_arch

        for i, (_, line, col) in enumerate(self.sets):
            try:
                load_arch(spec, [s for s, _, _ in self.sets[: i + 1]])
            except LpusimError as e:
                raise AsmError(str(e), line, col, self.source) from None
        raise exc

    # ---- lines
    def run(self, text: str) -> Program:
        for self.line, raw in enumerate(text.splitlines(), start=1):
            code = raw[: _code_end(raw)].rstrip()
            if not code.strip():
                continue
            toks = _lex(code)
            if toks[0].text.startswith("."):
                self.directive(code, toks)
            else:
                self.instruction(code)
        self.load()
        return self.finish()

    def directive(self, code: str, toks: list[_Tok]) -> None:
        d = toks[0]
        if d.text not in _DIRECTIVES:
            close = difflib.get_close_matches(d.text, _DIRECTIVES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise self.err(
                f"unknown directive {d.text!r}{hint}; directives: {', '.join(_DIRECTIVES)}", d.col
            )
        args = toks[1:]
        if d.text in _HEADER:
            if self.arch is not None:
                raise self.err(
                    f"{d.text} must come before .chip, .queue, .map, .tensor and instructions",
                    d.col,
                )
            getattr(self, "d_" + d.text[1:])(d, args, code)
            return
        self.load()
        getattr(self, "d_" + d.text[1:])(d, args, code)

    def _one_arg(self, d: _Tok, args: list[_Tok], what: str) -> _Tok:
        if len(args) != 1:
            col = args[1].col if len(args) > 1 else d.col + len(d.text)
            raise self.err(f"{d.text} takes one argument: {what}", col)
        return args[0]

    def _int(self, tok: _Tok, what: str, lo: int | None = None, hi: int | None = None) -> int:
        if not _INT_RE.match(tok.text):
            raise self.err(f"{what}: expected an integer, got {tok.text!r}", tok.col)
        v = int(tok.text, 0)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise self.err(f"{what}: expected an integer {rng}, got {v}", tok.col)
        return v

    def d_arch(self, d: _Tok, args: list[_Tok], code: str) -> None:
        tok = self._one_arg(d, args, "a preset name or a .toml path")
        if self.arch_spec is not None or self.sets or self.chips_seen:
            raise self.err(".arch must be the first directive (and given once)", d.col)
        name = _unquote(tok.text)
        if name is None:
            raise self.err(f"bad quoted string {tok.text}", tok.col)
        spec: str | Path = name
        if name.endswith(".toml") or "/" in name or "\\" in name:
            spec = self._path(name)
        self.arch_spec = (spec, self.line, tok.col)

    def d_set(self, d: _Tok, args: list[_Tok], code: str) -> None:
        rest = code[args[0].col - 1 :].strip() if args else ""
        key, sep, value = rest.partition("=")
        if not args or not sep or not key.strip() or not value.strip():
            raise self.err(
                ".set takes KEY=VALUE, e.g. .set latency.mem_read=6", args[0].col if args else d.col
            )
        self.sets.append((f"{key.strip()}={value.strip()}", self.line, args[0].col))

    def d_chips(self, d: _Tok, args: list[_Tok], code: str) -> None:
        tok = self._one_arg(d, args, "the number of chips")
        if self.chips_seen:
            raise self.err(".chips given twice", d.col)
        self.n_chips = self._int(tok, ".chips", 1)
        self.chips_seen = True

    def d_chip(self, d: _Tok, args: list[_Tok], code: str) -> None:
        tok = self._one_arg(d, args, "a chip number")
        self.chip = self._int(
            tok, f".chip (the program has {self.n_chips} chip(s))", 0, self.n_chips - 1
        )
        self.queue = None

    def d_queue(self, d: _Tok, args: list[_Tok], code: str) -> None:
        tok = self._one_arg(d, args, "a queue name, e.g. MEM_W0 or VXM0")
        self._queue_info(tok, "queue")
        self.queue = tok.text

    def _queue_info(self, tok: _Tok, what: str):
        names = [q.name for q in self.arch.queues]
        if tok.text not in names:
            close = difflib.get_close_matches(tok.text, names, n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            kinds: dict[str, list[str]] = {}
            for q in self.arch.queues:
                kinds.setdefault(q.kind, []).append(q.name)
            some = ", ".join(
                f"{v[0]}..{v[-1]}" if len(v) > 2 else ", ".join(v) for v in kinds.values()
            )
            raise self.err(
                f"unknown {what} {tok.text!r}{hint}; {self.arch.name} has {some}", tok.col
            )
        return self.arch.queue_by_name(tok.text)

    def d_map(self, d: _Tok, args: list[_Tok], code: str) -> None:
        if not args:
            raise self.err(".map takes INDEX then the entries, e.g. .map 0 319..0", d.col)
        idx = self._int(args[0], ".map index", 0, FIELDS["imm"].max_value)
        chip = self.chips[self.chip]
        if idx in chip.maps:
            raise self.err(
                f"map {idx} of chip {self.chip} is defined twice (first on line "
                f"{chip.maps[idx][1]})",
                args[0].col,
            )
        start = args[0].col - 1 + len(args[0].text)
        if len(args) > 1 and re.fullmatch(r"[A-Za-z_]\w*", args[1].text):
            start = args[1].col - 1 + len(args[1].text)  # a note such as `permute`
        lanes = self.arch.lanes
        entries: list[int] = []
        pos = start
        body = code[start:]
        if not body.strip():
            raise self.err(f"map {idx}: no entries (expected {lanes})", len(code) + 1)
        for part in body.split(","):
            col = pos + len(part) - len(part.lstrip()) + 1
            pos += len(part) + 1
            item = part.strip()
            m = _RANGE_RE.match(item)
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                seq = range(a, b + 1) if a <= b else range(a, b - 1, -1)
            elif re.fullmatch(r"-?\d+", item):
                seq = range(int(item), int(item) + 1)
            else:
                raise self.err(f"map {idx}: expected an integer or a range a..b, got {item!r}", col)
            if min(seq) < -1 or max(seq) >= lanes:
                raise self.err(f"map {idx}: entries must lie in -1..{lanes - 1}, got {item}", col)
            entries.extend(seq)
        if len(entries) != lanes:
            raise self.err(
                f"map {idx}: {len(entries)} entries, expected exactly {lanes} (one per lane)", d.col
            )
        chip.maps[idx] = (np.array(entries, dtype=np.int16), self.line, args[0].col)

    def d_tensor(self, d: _Tok, args: list[_Tok], code: str) -> None:
        usage = ".tensor NAME KIND DTYPE [shape] slices=... addr=A [stride=S] [data=FILE.npy]"
        if len(args) < 4:
            col = args[-1].col + len(args[-1].text) if args else d.col + len(d.text)
            raise self.err(f"expected {usage}", col)
        name_t, kind_t, dt_t, shape_t = args[:4]
        name = _unquote(name_t.text)
        if not name:
            raise self.err(f"bad tensor name {name_t.text}", name_t.col)
        if name in self.tensor_names:
            raise self.err(f"tensor {name!r} is defined twice", name_t.col)
        if kind_t.text not in TENSOR_KINDS:
            raise self.err(
                f"tensor {name}: unknown kind {kind_t.text!r} (kinds: {', '.join(TENSOR_KINDS)})",
                kind_t.col,
            )
        dt = DTYPE_BY_NAME.get(dt_t.text)
        if dt is None:
            close = difflib.get_close_matches(dt_t.text, list(DTYPE_BY_NAME), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise self.err(
                f"tensor {name}: unknown dtype {dt_t.text!r}{hint} (dtypes: "
                f"{', '.join(DTYPE_BY_NAME)})",
                dt_t.col,
            )
        shape = self._shape(shape_t, name)
        kv: dict[str, _Tok] = {}
        for tok in args[4:]:
            key, sep, value = tok.text.partition("=")
            if not sep or key not in _TENSOR_KEYS:
                raise self.err(
                    f"tensor {name}: expected key=value with a key of "
                    f"{', '.join(_TENSOR_KEYS)}, got {tok.text!r}",
                    tok.col,
                )
            if key in kv:
                raise self.err(f"tensor {name}: {key} given twice", tok.col)
            kv[key] = _Tok(value, tok.col + len(key) + 1)
        for key in ("slices", "addr"):
            if key not in kv:
                raise self.err(f"tensor {name}: missing {key}= ({usage})", d.col)
        slices = self._slices(kv["slices"], name, dt)
        addr = self._int(kv["addr"], f"tensor {name}: addr", 0)
        stride = self._int(kv["stride"], f"tensor {name}: stride") if "stride" in kv else 1
        spec = TensorSpec(name, kind_t.text, dt.name, shape, self.chip, slices, addr, stride)
        n_vec = spec.vectors(self.arch.lanes)
        depth = self.arch.mem_words_per_slice
        if n_vec:
            last = addr + (n_vec - 1) * stride
            if not 0 <= last < depth:
                tok = kv.get("stride", kv["addr"])
                raise self.err(
                    f"tensor {name}: {n_vec} vectors from address {addr} (stride "
                    f"{stride}) reach address {last}, outside 0..{depth - 1}",
                    tok.col,
                )
        if "data" in kv:
            spec.data = self._data(kv["data"], spec)
        self.tensor_names.add(name)
        self.tensors.append(spec)

    def _shape(self, tok: _Tok, name: str) -> tuple[int, ...]:
        t = tok.text
        if not (t.startswith("[") and t.endswith("]")):
            raise self.err(f"tensor {name}: expected a shape like [4,320], got {t!r}", tok.col)
        inner = t[1:-1].strip()
        dims = []
        for part in inner.split(",") if inner else []:
            if not re.fullmatch(r"\s*\d+\s*", part):
                raise self.err(
                    f"tensor {name}: shape dimensions are non-negative integers, got {t!r}", tok.col
                )
            dims.append(int(part))
        return tuple(dims)

    def _slices(self, tok: _Tok, name: str, dt) -> tuple[int, ...]:
        parts = tok.text.split(",") if tok.text else []
        if len(parts) != dt.nbytes:
            raise self.err(
                f"tensor {name}: {dt.name} needs {dt.nbytes} slice(s), one per "
                f"byte, got {len(parts)}",
                tok.col,
            )
        out: list[int] = []
        col = tok.col
        for p in parts:
            q = self._queue_info(_Tok(p, col), "MEM slice")
            if q.kind != "MEM":
                raise self.err(f"tensor {name}: {p} is a {q.kind} queue, not a MEM slice", col)
            if q.index in out:
                raise self.err(f"tensor {name}: slice {p} is given twice", col)
            out.append(q.index)
            col += len(p) + 1
        return tuple(out)

    def _data(self, tok: _Tok, spec: TensorSpec) -> np.ndarray:
        if spec.kind == "output":
            raise self.err(f"tensor {spec.name}: an output tensor takes no data", tok.col)
        text = _unquote(tok.text)
        if not text:
            raise self.err(f"tensor {spec.name}: data= needs a .npy file name", tok.col)
        path = self._path(text)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise self.err(f"tensor {spec.name}: cannot read {path}: {exc}", tok.col) from None
        if not isinstance(arr, np.ndarray):
            raise self.err(f"tensor {spec.name}: {path} is not a single .npy array", tok.col)
        if tuple(arr.shape) != spec.shape:
            raise self.err(
                f"tensor {spec.name}: {path} has shape {list(arr.shape)}, the "
                f"tensor is {list(spec.shape)}",
                tok.col,
            )
        try:
            return np.ascontiguousarray(arr.astype(numpy_dtype(spec.dtype)))
        except (TypeError, ValueError) as exc:
            raise self.err(
                f"tensor {spec.name}: cannot convert {path} ({arr.dtype}) to {spec.dtype}: {exc}",
                tok.col,
            ) from None

    def instruction(self, code: str) -> None:
        self.load()
        stripped = code.lstrip()
        at_col = len(code) - len(stripped) + 1
        target = None
        offset = at_col - 1
        if stripped.startswith("@"):
            word_end = len(stripped.split(maxsplit=1)[0])
            m = _CYCLE_RE.fullmatch(stripped[:word_end])
            if not m:
                raise self.err(
                    f"expected @CYCLE (a non-negative integer) before the "
                    f"instruction, got {stripped[:word_end]!r}",
                    at_col,
                )
            target = int(m.group(1))
            offset += word_end
        if self.queue is None:
            raise self.err(
                f"instruction before any .queue on chip {self.chip} (write "
                f".queue NAME first, e.g. .queue {self.arch.queues[0].name})",
                at_col,
            )
        text = code[offset:]
        word = assemble_instruction(text, line=self.line, col_offset=offset, source=self.source)
        row, values = decode(word)
        mn_col = offset + len(text) - len(text.lstrip()) + 1
        qinfo = self.arch.queue_by_name(self.queue)
        if row.unit not in ("ICU", qinfo.kind):
            raise self.err(
                f"{row.mnemonic} cannot run on queue {self.queue} (a {qinfo.kind} "
                f"queue; use a {row.unit} queue)",
                mn_col,
            )
        q = self.chips[self.chip].queues.setdefault(self.queue, _Queue())
        if row.mnemonic in ("nop", "repeat") and issue_cycles(word) < 1:
            raise self.err(f"{row.mnemonic} needs operands >= 1", mn_col)
        if row.mnemonic == "repeat" and not q.words:
            raise self.err(f"repeat needs a previous instruction in queue {self.queue}", mn_col)
        if target is not None:
            if q.cycle is None:
                raise self.err(
                    f"@{target}: queue {self.queue} passed a sync, so its issue "
                    "cycle is known only at run time",
                    at_col,
                )
            if target < q.cycle:
                raise self.err(
                    f"@{target} is before queue {self.queue}'s next free cycle {q.cycle}", at_col
                )
            gap = target - q.cycle
            while gap:
                n = min(gap, FIELDS["imm"].max_value)
                q.words.append(encode("nop", imm=n))
                gap -= n
            q.cycle = target
        q.words.append(word)
        if q.cycle is not None:
            q.cycle = None if row.mnemonic == "sync" else q.cycle + issue_cycles(word)

    def finish(self) -> Program:
        chips = []
        for ci, chip in enumerate(self.chips):
            queues = {
                q.name: to_words(chip.queues[q.name].words)
                for q in self.arch.queues
                if q.name in chip.queues
            }
            cp = ChipProgram(queues=queues)
            if chip.maps:
                m = max(chip.maps) + 1
                for i in range(m):
                    if i not in chip.maps:
                        _, line, col = chip.maps[m - 1]
                        raise AsmError(
                            f"chip {ci}: map table has no entry {i} (entries must "
                            f"be 0..{m - 1} with no gap)",
                            line,
                            col,
                            self.source,
                        )
                cp.maps = np.stack([chip.maps[i][0] for i in range(m)])
            chips.append(cp)
        return Program(
            arch_config=_arch_config(self.arch),
            chips=chips,
            tensors=self.tensors,
            meta={"source": self.source, "generator": "lpusim.asm"},
        )
