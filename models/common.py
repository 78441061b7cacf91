"""Shared helpers for the ONNX graph builders: one `GraphBuilder` that names nodes, makes
initializers (seeded random or shape-only), and hides the opset differences the builders meet.

## The shape-only convention (read by the compiler frontend)

A builder called with ``weights="shape-only"`` writes every *weight* initializer as a
``TensorProto`` that carries ``dims`` and ``data_type`` but no data:

- ``data_location = TensorProto.EXTERNAL``
- ``external_data`` entries: ``location = SHAPE_ONLY_LOCATION`` (``"__lpusim_shape_only__"``, a
  file that never exists), ``offset = "0"``, ``length = <bytes the tensor would take>``
- the model carries ``metadata_props`` ``SHAPE_ONLY_KEY = "shape-only"``
  (``"lpusim.weights"``) so a reader can tell without looking at any tensor.

Use `is_shape_only(tensor)` / `model_is_shape_only(model)` to detect it. What works and what
does not on such a model (onnx 1.23):

- ``onnx.shape_inference.infer_shapes(model, strict_mode=True)`` works (it reads dims only).
- ``onnx.checker.check_model`` fails by design: it insists the external file exists
  ("... should be stored in __lpusim_shape_only__, but it is not regular file"). Use
  `check_model` here instead, which checks a twin of the graph whose shape-only initializers
  are turned into graph inputs of the same type and shape (no data is allocated).
- ``onnx.load(path)`` fails the same way; use ``onnx.load(path, load_external_data=False)``.

Frontends should treat any EXTERNAL tensor whose file is absent the same way: the shape is
known, the values are not (timing-only compilation).

Only weights (initializers) are ever shape-only. Small computed constants (shape vectors,
scalars, the causal mask, rotary cos/sin tables) are always ``Constant`` nodes with real data,
so the frontend can fold shape subgraphs and masks in either mode. Parameter counts are
therefore the sum of initializer sizes (`parameter_count`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SHAPE_ONLY_LOCATION = "__lpusim_shape_only__"
SHAPE_ONLY_KEY = "lpusim.weights"
WEIGHT_MODES = ("random", "shape-only")
FLOAT32_MIN = float(np.finfo(np.float32).min)
INT64_MAX = int(np.iinfo(np.int64).max)


def is_shape_only(tensor: TensorProto) -> bool:
    """True if `tensor` follows the shape-only convention (dims known, no data anywhere)."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return False
    return any(e.key == "location" and e.value == SHAPE_ONLY_LOCATION
               for e in tensor.external_data)


def model_is_shape_only(model: onnx.ModelProto) -> bool:
    return any(p.key == SHAPE_ONLY_KEY and p.value == "shape-only"
               for p in model.metadata_props)


def check_model(model: onnx.ModelProto, full_check: bool = True) -> None:
    """onnx.checker.check_model, accepting shape-only initializers (see the module docstring)."""
    if any(is_shape_only(t) for t in model.graph.initializer):
        twin = onnx.ModelProto()
        twin.CopyFrom(model)
        keep = [t for t in twin.graph.initializer if not is_shape_only(t)]
        for t in twin.graph.initializer:
            if is_shape_only(t):
                twin.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type,
                                                                      list(t.dims)))
        del twin.graph.initializer[:]
        twin.graph.initializer.extend(keep)
        model = twin
    onnx.checker.check_model(model, full_check=full_check)


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of elements in all initializers (weights), from shapes alone."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def shape_only_tensor(name: str, shape: Sequence[int],
                      dtype: int = TensorProto.FLOAT) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = dtype
    t.dims.extend(int(d) for d in shape)
    t.data_location = TensorProto.EXTERNAL
    nbytes = math.prod(shape) * helper.tensor_dtype_to_np_dtype(dtype).itemsize
    for key, value in (("location", SHAPE_ONLY_LOCATION), ("offset", "0"),
                       ("length", str(nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs of one graph.

    Weights are drawn from one seeded numpy Generator in creation order, so a builder called
    twice with the same arguments gives byte-identical models.
    """

    def __init__(self, name: str, *, weights: str = "random", seed: int = 0, opset: int = 17):
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
        if opset < 17:
            raise ValueError(f"opset {opset} is not supported; the builders need >= 17 "
                             "(LayerNormalization)")
        self.name = name
        self.weights = weights
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}
        self._const_cache: dict[tuple, str] = {}
        self.scope = ""

    # --- naming -------------------------------------------------------------------------

    def _unique(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def node_name(self, op_type: str) -> str:
        return self._unique(f"{self.scope}/{op_type}")

    # --- graph pieces -------------------------------------------------------------------

    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def weight(self, name: str, shape: Sequence[int], init: str = "normal",
               std: float = 0.02) -> str:
        """A float32 weight initializer. init: normal (N(0, std)), bias (N(0, std)),
        scale (1 + N(0, 0.1): norm gains that are not all ones, so tests see them)."""
        shape = tuple(int(d) for d in shape)
        if self.weights == "shape-only":
            self.initializers.append(shape_only_tensor(name, shape))
            return name
        x = self.rng.standard_normal(shape, dtype=np.float32)
        if init in ("normal", "bias"):
            x *= np.float32(std)
        elif init == "scale":
            x = np.float32(1.0) + np.float32(0.1) * x
        else:
            raise ValueError(f"unknown init {init!r}")
        self.initializers.append(numpy_helper.from_array(x.astype(np.float32), name))
        return name

    def const(self, value, dtype=None, name: str | None = None) -> str:
        """A Constant node holding `value` (always real data); identical small constants are
        shared."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        out = name or self._unique(f"{self.scope}/Constant_output")
        self.nodes.append(helper.make_node(
            "Constant", [], [out], name=self.node_name("Constant"),
            value=numpy_helper.from_array(arr, out)))
        if key is not None:
            self._const_cache[key] = out
        return out

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, *,
           outputs: Sequence[str] | None = None, **attrs):
        """Append a node; returns its output name (or a list of names when n_out > 1)."""
        name = self.node_name(op_type)
        if outputs is None:
            outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name,
                                           **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    # --- opset-dependent forms ----------------------------------------------------------

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(list(axes), np.int64)],
                           keepdims=keepdims)
        return self.op("ReduceMean", [x], axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [x, self.const(list(axes), np.int64)])

    def split(self, x: str, sizes: Sequence[int], axis: int) -> list[str]:
        return self.op("Split", [x, self.const(list(sizes), np.int64)], n_out=len(sizes),
                       axis=axis)

    def slice(self, x: str, starts, ends, axes, steps=None) -> str:
        def as_input(v):
            return v if isinstance(v, str) else self.const(list(v), np.int64)
        ins = [x, as_input(starts), as_input(ends), as_input(axes)]
        if steps is not None:
            ins.append(as_input(steps))
        return self.op("Slice", ins)

    def dim(self, x: str, index: int) -> str:
        """Dimension `index` of x as a 1-D int64 tensor, written as torch exporters do
        (Shape -> Gather -> Unsqueeze)."""
        shape = self.op("Shape", [x])
        d = self.op("Gather", [shape, self.const(np.int64(index))], axis=0)
        return self.unsqueeze(d, [0])

    def scalar_dim(self, x: str, index: int) -> str:
        shape = self.op("Shape", [x])
        return self.op("Gather", [shape, self.const(np.int64(index))], axis=0)

    def concat_shape(self, parts: Sequence[str | int]) -> str:
        ins = [p if isinstance(p, str) else self.const([p], np.int64) for p in parts]
        return self.op("Concat", ins, axis=0)

    # --- common layers ------------------------------------------------------------------

    def linear(self, x: str, prefix: str, d_in: int, d_out: int, bias: bool = True) -> str:
        """MatMul by a [d_in, d_out] weight (+ Add bias), as exporters write nn.Linear/Conv1D."""
        y = self.op("MatMul", [x, self.weight(f"{prefix}.weight", (d_in, d_out))])
        if bias:
            y = self.op("Add", [y, self.weight(f"{prefix}.bias", (d_out,), init="bias")])
        return y

    def layer_norm(self, x: str, prefix: str, d: int, eps: float,
                   decomposed: bool = False) -> str:
        gamma = self.weight(f"{prefix}.weight", (d,), init="scale")
        beta = self.weight(f"{prefix}.bias", (d,), init="bias")
        if not decomposed:
            return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)
        mean = self.reduce_mean(x, [-1])
        xc = self.op("Sub", [x, mean])
        var = self.reduce_mean(self.op("Pow", [xc, self.const(np.float32(2.0))]), [-1])
        std = self.op("Sqrt", [self.op("Add", [var, self.const(np.float32(eps))])])
        y = self.op("Div", [xc, std])
        return self.op("Add", [self.op("Mul", [y, gamma]), beta])

    def gelu(self, x: str, form: str) -> str:
        """GELU: 'tanh' (Mul/Pow/Add/Tanh, as GPT-2's NewGELU exports), 'erf' (Div/Erf/Add/Mul,
        as torch's exact gelu exports), or 'op' (the opset-20 Gelu op)."""
        f32 = np.float32
        if form == "tanh":
            cube = self.op("Pow", [x, self.const(f32(3.0))])
            inner = self.op("Add", [x, self.op("Mul", [self.const(f32(0.044715)), cube])])
            t = self.op("Tanh", [self.op("Mul", [self.const(f32(math.sqrt(2.0 / math.pi))),
                                                 inner])])
            half_x = self.op("Mul", [self.const(f32(0.5)), x])
            return self.op("Mul", [half_x, self.op("Add", [self.const(f32(1.0)), t])])
        if form == "erf":
            e = self.op("Erf", [self.op("Div", [x, self.const(f32(math.sqrt(2.0)))])])
            y = self.op("Mul", [x, self.op("Add", [e, self.const(f32(1.0))])])
            return self.op("Mul", [y, self.const(f32(0.5))])
        if form == "op":
            if self.opset < 20:
                raise ValueError("gelu='op' needs opset >= 20")
            return self.op("Gelu", [x], approximate="none")
        raise ValueError(f"gelu must be 'tanh', 'erf' or 'op', got {form!r}")

    def causal_mask_const(self, max_positions: int) -> str:
        """[max_positions, max_positions] float32: 0 on and below the diagonal, float32 min
        above (the additive causal mask exporters bake in as a constant)."""
        m = np.triu(np.full((max_positions, max_positions), FLOAT32_MIN, np.float32), k=1)
        return self.const(m, name=self._unique("causal_mask"))

    # --- finish -------------------------------------------------------------------------

    def model(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="lpusim.models", producer_version="0.1.0")
        # The lowest IR version that carries this opset, so older onnx/onnxruntime read it.
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
        if doc:
            model.doc_string = doc
        if self.weights == "shape-only":
            helper.set_model_props(model, {SHAPE_ONLY_KEY: "shape-only"})
        return model


def check_dims(**dims: int) -> None:
    for k, v in dims.items():
        if not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


# --- attention pieces shared by the families ---------------------------------------------

def split_heads(b: GraphBuilder, x: str, shape_bs: tuple[str, str], heads: int,
                head_dim: int) -> str:
    """[B, S, heads*head_dim] -> Reshape [B, S, heads, head_dim] -> Transpose [B, heads, S, hd]."""
    shape = b.concat_shape([shape_bs[0], shape_bs[1], heads, head_dim])
    return b.op("Transpose", [b.op("Reshape", [x, shape])], perm=[0, 2, 1, 3])


def merge_heads(b: GraphBuilder, x: str, shape_bs: tuple[str, str], d: int) -> str:
    """[B, heads, S, hd] -> Transpose [B, S, heads, hd] -> Reshape [B, S, d]."""
    shape = b.concat_shape([shape_bs[0], shape_bs[1], d])
    return b.op("Reshape", [b.op("Transpose", [x], perm=[0, 2, 1, 3]), shape])


def sdpa(b: GraphBuilder, q: str, k: str, v: str, head_dim: int, mask: str | None,
         scale: str) -> str:
    """Decomposed scaled dot-product attention on [B, H, S, hd] tensors: MatMul(q, k^T),
    Div by sqrt(hd) (scale='div') or Mul by 1/sqrt(hd) (scale='mul'), Add the additive mask,
    Softmax over the last axis, MatMul by v."""
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    if scale == "div":
        scores = b.op("Div", [scores, b.const(np.float32(math.sqrt(head_dim)))])
    elif scale == "mul":
        scores = b.op("Mul", [scores, b.const(np.float32(1.0 / math.sqrt(head_dim)))])
    else:
        raise ValueError(f"scale must be 'div' or 'mul', got {scale!r}")
    if mask is not None:
        scores = b.op("Add", [scores, mask])
    probs = b.op("Softmax", [scores], axis=-1)
    return b.op("MatMul", [probs, v])


def causal_mask(b: GraphBuilder, kind: str, seq_1d: str, max_positions: int) -> str:
    """The additive causal mask for the current sequence, [S, S]:
    'constant': a [max_positions, max_positions] constant sliced to [S, S] (GPT-2 style);
    'trilu': ConstantOfShape([S, S], float32 min) -> Trilu(upper, k=1) (Llama export style)."""
    if kind == "constant":
        full = b.causal_mask_const(max_positions)
        ends = b.op("Concat", [seq_1d, seq_1d], axis=0)
        return b.slice(full, [0, 0], ends, [0, 1])
    if kind == "trilu":
        shape = b.op("Concat", [seq_1d, seq_1d], axis=0)
        filled = b.op("ConstantOfShape", [shape],
                      value=numpy_helper.from_array(np.array([FLOAT32_MIN], np.float32)))
        return b.op("Trilu", [filled, b.const(np.int64(1))], upper=1)
    raise ValueError(f"mask must be 'constant' or 'trilu', got {kind!r}")


def fused_attention(b: GraphBuilder, q: str, k: str, v: str, *, past: tuple[str, str] | None,
                    present: tuple[str, str] | None, q_heads: int | None = None,
                    kv_heads: int | None = None) -> str:
    """The opset-23 Attention op with is_causal=1. With 3-D Q/K/V ([B, S, heads*hd]) pass
    q_heads and kv_heads (the q_num_heads / kv_num_heads attributes); with 4-D inputs
    ([B, heads, S, hd]) leave them None. past/present are (key, value) names or None."""
    ins = [q, k, v]
    outs = [b._unique(f"{b.scope}/Attention_output_0")]
    if past is not None:
        ins += ["", past[0], past[1]]
        outs += list(present)
    attrs = {"is_causal": 1}
    if q_heads is not None:
        attrs.update(q_num_heads=q_heads, kv_num_heads=kv_heads)
    y = b.op("Attention", ins, outputs=outs, **attrs)
    return y[0] if isinstance(y, list) else y
