"""Error types a user can see. Each carries a one-line reason; the CLI prints it and exits 1."""


class LpusimError(Exception):
    """Base class of every error caused by bad input (never by a bug in lpusim)."""


class ArchError(LpusimError):
    """An architecture preset or override is invalid (names the key)."""


class IsaError(LpusimError):
    """The instruction table is inconsistent, or a field value does not fit its field."""


class AsmError(LpusimError):
    """Assembly text is malformed; the message starts with 'line L, column C:'."""

    def __init__(self, message: str, line: int, column: int, source: str = "<asm>"):
        super().__init__(f"{source}:{line}:{column}: {message}")
        self.line = line
        self.column = column
        self.reason = message


class ProgramFormatError(LpusimError):
    """A Program file is truncated, corrupt, of another version, or inconsistent."""


class HazardError(LpusimError):
    """A program broke a rule of the machine; names instruction, unit, cycle and stream."""

    def __init__(self, kind: str, message: str, *, chip: int = 0, unit: str = "",
                 instr: int = -1, cycle: int = -1, stream: str = ""):
        where = [f"chip {chip}"]
        if unit:
            where.append(f"unit {unit}")
        if instr >= 0:
            where.append(f"instruction #{instr}")
        if cycle >= 0:
            where.append(f"cycle {cycle}")
        if stream:
            where.append(f"stream {stream}")
        super().__init__(f"hazard [{kind}] at {', '.join(where)}: {message}")
        self.kind = kind
        self.chip = chip
        self.unit = unit
        self.instr = instr
        self.cycle = cycle
        self.stream = stream
