"""The public Python API: compile an ONNX model, simulate a Program, or both with a check
against a reference runtime.

    import lpusim
    res = lpusim.run_onnx("model.onnx", {"x": x})
    res.outputs["y"], res.report["cycles"], res.report["roofline_ratio"]
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpusim.errors import LpusimError


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    report: dict
    reference_outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def _arch(arch, overrides=()):
    from lpusim.arch import Arch, load_arch

    return arch if isinstance(arch, Arch) else load_arch(arch, overrides)


@contextlib.contextmanager
def _no_cyclic_gc():
    """Scheduling allocates millions of small objects that live until the end (instructions,
    reservations); the cyclic collector's passes over them cost 10-15% of a large compile and
    free nothing that reference counting would not. Reference counting still frees as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compile_onnx(model, *, arch="tsp-v1", precision: str = "fp32", dims=None, overrides=(),
                 dump_ir_after: str | None = None, dump=print):
    """ONNX model (path or ModelProto) -> Program for one chip of `arch`."""
    from compiler.backend.compile import compile_graph
    from compiler.frontend import import_onnx
    from compiler.pipeline import default_pipeline, run_pipeline

    a = _arch(arch, overrides)
    graph = import_onnx(model, dims or {})
    graph = run_pipeline(graph, default_pipeline(), dump_after=dump_ir_after, dump=dump)
    with _no_cyclic_gc():
        program = compile_graph(graph, a, precision=precision)
    program.meta["model"] = str(model) if isinstance(model, (str, Path)) else graph.name
    return program


def simulate(program, inputs=None, **kwargs):
    """Run a Program (see lpusim.simulator.simulate)."""
    from lpusim.simulator import simulate as _simulate

    return _simulate(program, inputs, **kwargs)


def random_inputs_for(program, seed: int = 0) -> dict[str, np.ndarray]:
    from lpusim.cli_sim import random_inputs

    return random_inputs(program, seed)


def reference_outputs(model, inputs: dict[str, np.ndarray], dims=None) -> tuple[dict, str]:
    """Outputs of the reference runtime: onnxruntime where installed (the onnx package's
    ReferenceEvaluator fails on some valid exported graphs), else, or when onnxruntime cannot
    run the model (e.g. a bfloat16 output it cannot hand to numpy), the ReferenceEvaluator.
    Raises ReferenceUnavailable (one line per runtime's reason) when neither can."""
    import onnx

    from compiler.frontend import _first_line

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
             for i in proto.graph.input if i.type.tensor_type.elem_type}
    # the program may hold an input in a narrower type (int64 indices load as int32)
    inputs = {k: np.asarray(v).astype(types[k]) if k in types else v for k, v in inputs.items()}
    failed = []
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        try:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(proto.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            got = sess.run(None, inputs)
            return dict(zip(names, got, strict=True)), f"onnxruntime {ort.__version__}"
        except Exception as e:  # noqa: BLE001 - any failure of the runtime: try the other
            failed.append(f"onnxruntime {ort.__version__}: {_first_line(e)}")
    from onnx.reference import ReferenceEvaluator

    try:
        names = [o.name for o in proto.graph.output]
        got = ReferenceEvaluator(proto).run(None, inputs)
    except Exception as e:  # noqa: BLE001
        failed.append(f"onnx.reference {onnx.__version__}: {_first_line(e)}")
        raise ReferenceUnavailable("; ".join(failed)) from e
    name = f"onnx.reference {onnx.__version__}"
    return dict(zip(names, got, strict=True)), \
        name + (f" ({failed[0]})" if failed else "")


class ReferenceUnavailable(LpusimError):
    """No reference runtime could run the model (the reason of each, in one line)."""


def run_onnx(model, inputs=None, *, arch="tsp-v1", precision: str = "fp32", dims=None,
             overrides=(), seed: int = 0, engine: str = "fast",
             dump_ir_after: str | None = None, dump=print) -> RunResult:
    """Compile, simulate and compare with the reference runtime. Inputs not given get seeded
    random values of the right type; the report gives the error per output."""
    t = time.perf_counter()
    program = compile_onnx(model, arch=arch, precision=precision, dims=dims,
                           overrides=overrides, dump_ir_after=dump_ir_after, dump=dump)
    compile_s = time.perf_counter() - t
    given = {k: np.asarray(v) for k, v in (inputs or {}).items()}
    for name, v in random_inputs_for(program, seed).items():
        given.setdefault(name, v)
    res = simulate(program, given, engine=engine)
    try:
        ref, ref_name = reference_outputs(model, {k: v for k, v in given.items()
                                                  if any(t.name == k and t.kind == "input"
                                                         for t in program.tensors)})
    except ReferenceUnavailable as e:  # the outputs stand; nothing to compare them with
        ref, ref_name = {}, f"none (no runtime could run the model: {e})"
    errors = {}
    for name, got in res.outputs.items() if ref else ():
        want = np.asarray(ref[name], dtype=np.float64)
        g64 = got.astype(np.float64)
        with np.errstate(invalid="ignore"):
            # the same NaN or infinity in both is agreement, not an error of NaN
            same = (np.isnan(g64) & np.isnan(want)) | (g64 == want)
            diff = np.where(same, 0.0, np.abs(g64 - want))
        # relative to the output's largest magnitude: an elementwise ratio is meaningless
        # where the reference is near zero
        finite = np.abs(want[np.isfinite(want)])
        scale = float(finite.max()) if finite.size else 0.0
        errors[name] = {"max_abs": float(diff.max()) if diff.size else 0.0,
                        "max_rel": float(diff.max() / scale) if diff.size and scale else 0.0}
    report = dict(res.report)
    report.update(precision=precision, reference=ref_name, errors=errors,
                  compile_s=compile_s, exact_fp32_mode=precision == "fp32",
                  note=("fp32 is the exact mode for checking; the MXM runs it at the preset's "
                        "emulated rate, which is not a hardware mode of "
                        f"{report['arch']}") if precision == "fp32" else "")
    return RunResult(res.outputs, report, ref)

