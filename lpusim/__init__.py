"""lpusim: an open toolchain for SRAM-only, compiler-scheduled tensor streaming processors.

Submodules are imported lazily so that `import lpusim` stays cheap and never pulls in numba.
"""

__version__ = "0.1.0"

from lpusim.errors import (  # noqa: F401  (re-exported)
    ArchError,
    AsmError,
    HazardError,
    IsaError,
    LpusimError,
    ProgramFormatError,
)

_API = ("compile_onnx", "run_onnx", "simulate", "RunResult")


def __getattr__(name: str):
    if name in _API:
        from lpusim import api

        return getattr(api, name)
    raise AttributeError(f"module 'lpusim' has no attribute {name!r}")
