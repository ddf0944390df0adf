"""ONNX models: loaded without running any submitted code, outputs from onnxruntime, gradients from a torch
evaluation of the same graph.

What loading does, step by step (every failure is one :class:`OnnxError` line naming the file):

1. read the file (at most ``max_bytes``) and parse it as an ONNX protobuf (``onnx.load_from_string``:
   a data parser, no code); check it with ``onnx.checker``;
2. read tensors stored in external files only from plain file names beside the model (a path could
   point at another submission's files); refuse local functions, sub-graphs and every operator outside
   :data:`OPERATORS` (the operators of ordinary image classifiers, each evaluated below in torch;
   ``If``/``Loop``/``Scan``, ``ConstantOfShape``, ``Expand``, custom domains and the like are refused,
   which also keeps the work and memory a file can ask for proportional to its size and input);
3. check the single input against the dataset's shape (a dynamic batch dimension is required) and infer
   every intermediate shape for one input, refusing one larger than ``max_elements``;
4. create an onnxruntime session from the bytes (CPU provider; onnxruntime runs registered C++ kernels
   only, and this file's operators are all standard ones), and a :class:`OnnxGraph` of the same nodes.

:class:`OnnxClassifier` answers forward passes that need no gradient with onnxruntime and the others with
:class:`OnnxGraph`, whose torch operations autograd differentiates. :func:`check_agreement` runs both on
the same inputs at load time and refuses the model if they disagree, so the gradients attacks follow are
those of the model that gives the labels.

Why not a converter package: onnx2torch (1.5.15, August 2024) and onnx2pytorch (0.6.0) both require
torchvision, which this project must never need; onnx2fx is at 0.0.1. The subset evaluated here is small
and each operator is tested against onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OPERATORS",
    "OnnxClassifier",
    "OnnxError",
    "OnnxGraph",
    "check_agreement",
    "load_onnx",
]

Tensor = torch.Tensor


class OnnxError(ValueError):
    """An ONNX file that cannot be evaluated: the message names the file and says why, in one line."""


class _Unsupported(Exception):
    """An attribute value the torch evaluation does not implement (reported as an OnnxError)."""


# -- operators ---------------------------------------------------------------------------------------------
def _spatial_pads(attrs: dict, size: Sequence[int], kernel: Sequence[int], strides, dilations) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends) from ``pads`` or ``auto_pad``."""
    nd = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * nd)))
    if auto == "VALID":
        return [0] * (2 * nd)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _Unsupported(f"auto_pad={auto}")
    begins, ends = [], []
    for length, k, s, d in zip(size, kernel, strides, dilations, strict=True):
        out = math.ceil(length / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - length, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return begins + ends


def _pad(x: Tensor, pads: Sequence[int], value: float) -> Tensor:
    if not any(pads):
        return x
    nd = len(pads) // 2
    torch_pads: list[int] = []
    for axis in reversed(range(nd)):  # F.pad lists the last dimension first
        torch_pads += [pads[axis], pads[axis + nd]]
    return F.pad(x, torch_pads, value=value)


def _window(attrs: dict, x: Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    pads = _spatial_pads(attrs, x.shape[2:], kernel, strides, dilations)
    if attrs.get("ceil_mode", 0):
        for axis in range(nd):  # ceil and floor give the same size when the windows tile exactly
            padded = x.shape[2 + axis] + pads[axis] + pads[axis + nd]
            if (padded - (kernel[axis] - 1) * dilations[axis] - 1) % strides[axis]:
                raise _Unsupported("ceil_mode=1 where the windows do not tile the input")
    return strides, dilations, pads


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _conv(ins: list, attrs: dict, opset: int) -> Tensor:
    x, weight = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    nd = weight.dim() - 2
    if nd not in _CONV:
        raise _Unsupported(f"{nd}-d convolution")
    strides, dilations, pads = _window(attrs, x, list(weight.shape[2:]))
    return _CONV[nd](_pad(x, pads, 0.0), weight, bias, strides, 0, dilations, attrs.get("group", 1))


def _max_pool(ins: list, attrs: dict, opset: int) -> Tensor:
    x, kernel = ins[0], list(attrs["kernel_shape"])
    strides, dilations, pads = _window(attrs, x, kernel)
    if len(kernel) not in _MAX_POOL:
        raise _Unsupported(f"{len(kernel)}-d pooling")
    return _MAX_POOL[len(kernel)](_pad(x, pads, -math.inf), kernel, strides, 0, dilations)


def _average_pool(ins: list, attrs: dict, opset: int) -> Tensor:
    x, kernel = ins[0], list(attrs["kernel_shape"])
    strides, dilations, pads = _window(attrs, x, kernel)
    if any(d != 1 for d in dilations) or len(kernel) not in _AVG_POOL:
        raise _Unsupported("dilated or >3-d average pooling")
    pool = _AVG_POOL[len(kernel)]
    if not any(pads) or attrs.get("count_include_pad", 0):
        return pool(_pad(x, pads, 0.0), kernel, strides)
    # Average over the window's cells inside the input only: pooled sum over pooled count.
    ones = torch.ones_like(x[:1, :1])
    return pool(_pad(x, pads, 0.0), kernel, strides) / pool(_pad(ones, pads, 0.0), kernel, strides)


def _gemm(ins: list, attrs: dict, opset: int) -> Tensor:
    a, b = ins[0], ins[1]
    a = a.transpose(0, 1) if attrs.get("transA", 0) else a
    b = b.transpose(0, 1) if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(ins) > 2 and ins[2] is not None:
        out = out + attrs.get("beta", 1.0) * ins[2]
    return out


def _batch_norm(ins: list, attrs: dict, opset: int) -> Tensor:
    if attrs.get("training_mode", 0):
        raise _Unsupported("training_mode=1")
    x, scale, bias, mean, var = ins[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = torch.rsqrt(var.reshape(shape) + attrs.get("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * inv * scale.reshape(shape) + bias.reshape(shape)


def _flatten(ins: list, attrs: dict, opset: int) -> Tensor:
    x = ins[0]
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _reshape(ins: list, attrs: dict, opset: int) -> Tensor:
    x, shape = ins[0], [int(v) for v in ins[1].tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _axes(ins: list, attrs: dict, opset: int, since: int) -> list[int] | None:
    """Axes from the ``axes`` input (opset >= ``since``) or attribute (earlier)."""
    if opset >= since:
        return [int(v) for v in ins[1].tolist()] if len(ins) > 1 and ins[1] is not None else None
    return list(attrs["axes"]) if "axes" in attrs else None


def _squeeze(ins: list, attrs: dict, opset: int) -> Tensor:
    x, axes = ins[0], _axes(ins, attrs, opset, 13)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(a + x.dim() if a < 0 else a for a in axes))


def _unsqueeze(ins: list, attrs: dict, opset: int) -> Tensor:
    x, axes = ins[0], _axes(ins, attrs, opset, 13)
    rank = x.dim() + len(axes or [])
    for axis in sorted(a + rank if a < 0 else a for a in axes or []):
        x = x.unsqueeze(axis)
    return x


def _reduce(function: Callable[..., Tensor], since: int) -> Callable[..., Tensor]:
    def reduce(ins: list, attrs: dict, opset: int) -> Tensor:
        x, axes = ins[0], _axes(ins, attrs, opset, since)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return function(x, dim=tuple(axes), keepdim=keep)

    return reduce


def _softmax(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def softmax(ins: list, attrs: dict, opset: int) -> Tensor:
        x = ins[0]
        if opset >= 13:
            return function(x, dim=attrs.get("axis", -1))
        axis = attrs.get("axis", 1)  # before opset 13: over all dimensions from axis on, as one
        axis = axis + x.dim() if axis < 0 else axis
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return function(flat, dim=1).reshape(x.shape)

    return softmax


def _clip(ins: list, attrs: dict, opset: int) -> Tensor:
    if opset < 11:
        low, high = attrs.get("min"), attrs.get("max")
    else:
        low = ins[1] if len(ins) > 1 and ins[1] is not None else None
        high = ins[2] if len(ins) > 2 and ins[2] is not None else None
    return torch.clamp(ins[0], low, high)


def _gather(ins: list, attrs: dict, opset: int) -> Tensor:
    data, index = ins[0], ins[1].long()
    axis = attrs.get("axis", 0)
    axis = axis + data.dim() if axis < 0 else axis
    index = torch.where(index < 0, index + data.shape[axis], index)
    picked = torch.index_select(data, axis, index.reshape(-1))
    return picked.reshape((*data.shape[:axis], *index.shape, *data.shape[axis + 1 :]))


def _divide(ins: list, attrs: dict, opset: int) -> Tensor:
    a, b = ins
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


_DTYPES = {
    1: torch.float32,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
}


def _cast(ins: list, attrs: dict, opset: int) -> Tensor:
    if attrs["to"] not in _DTYPES:
        raise _Unsupported(f"Cast to ONNX type {attrs['to']}")
    return ins[0].to(_DTYPES[attrs["to"]])


def _shape(ins: list, attrs: dict, opset: int) -> Tensor:
    shape = list(ins[0].shape)
    return torch.tensor(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=torch.int64)


def _gelu(ins: list, attrs: dict, opset: int) -> Tensor:
    approximate = attrs.get("approximate", "none")
    return F.gelu(ins[0], approximate=approximate.decode() if isinstance(approximate, bytes) else approximate)


def _unary(function: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda ins, attrs, opset: function(ins[0])


def _binary(function: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda ins, attrs, opset: function(ins[0], ins[1])


#: Every operator of the default ONNX domain the torch evaluation implements.
OPERATORS: dict[str, Callable[[list, dict, int], Tensor]] = {
    "Abs": _unary(torch.abs),
    "Add": _binary(torch.add),
    "AveragePool": _average_pool,
    "BatchNormalization": _batch_norm,
    "Cast": _cast,
    "Clip": _clip,
    "Concat": lambda ins, attrs, opset: torch.cat(ins, dim=attrs["axis"]),
    "Conv": _conv,
    "Div": _divide,
    "Dropout": _unary(lambda x: x),
    "Elu": lambda ins, attrs, opset: F.elu(ins[0], alpha=attrs.get("alpha", 1.0)),
    "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp),
    "Flatten": _flatten,
    "Gather": _gather,
    "Gelu": _gelu,
    "Gemm": _gemm,
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": _unary(lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)),
    "HardSigmoid": lambda ins, attrs, opset: torch.clamp(
        attrs.get("alpha", 0.2) * ins[0] + attrs.get("beta", 0.5), 0.0, 1.0
    ),
    "HardSwish": _unary(F.hardswish),
    "Identity": _unary(lambda x: x),
    "LeakyRelu": lambda ins, attrs, opset: F.leaky_relu(ins[0], attrs.get("alpha", 0.01)),
    "Log": _unary(torch.log),
    "LogSoftmax": _softmax(F.log_softmax),
    "MatMul": _binary(torch.matmul),
    "MaxPool": _max_pool,
    "Mul": _binary(torch.mul),
    "Neg": _unary(torch.neg),
    "Pow": _binary(torch.pow),
    "Reciprocal": _unary(torch.reciprocal),
    "ReduceMean": _reduce(torch.mean, 18),
    "ReduceSum": _reduce(torch.sum, 13),
    "Relu": _unary(torch.relu),
    "Reshape": _reshape,
    "Shape": _shape,
    "Sigmoid": _unary(torch.sigmoid),
    "Softmax": _softmax(F.softmax),
    "Softplus": _unary(F.softplus),
    "Sqrt": _unary(torch.sqrt),
    "Squeeze": _squeeze,
    "Sub": _binary(torch.sub),
    "Tanh": _unary(torch.tanh),
    "Transpose": lambda ins, attrs, opset: ins[0].permute(
        attrs.get("perm", list(reversed(range(ins[0].dim()))))
    ),
    "Unsqueeze": _unsqueeze,
}
#: Operators whose extra outputs (Dropout's mask, MaxPool's indices, BatchNorm's running stats) are refused.
_SINGLE_OUTPUT = {"Dropout", "MaxPool", "BatchNormalization"}


# -- the graph as a torch module ----------------------------------------------------------------------------
def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node: Any) -> np.ndarray:
    from onnx import numpy_helper

    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"].t)
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"].f, dtype=np.float32)
    if "value_floats" in attrs:
        return np.asarray(list(attrs["value_floats"].floats), dtype=np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"].i, dtype=np.int64)
    if "value_ints" in attrs:
        return np.asarray(list(attrs["value_ints"].ints), dtype=np.int64)
    raise _Unsupported(f"Constant with attribute {sorted(attrs)}")


class OnnxGraph(nn.Module):
    """The nodes of an ONNX graph evaluated with torch operations (differentiable with respect to the
    input). Initializers and Constant nodes are buffers."""

    def __init__(self, model: Any, opset: int) -> None:
        from onnx import numpy_helper

        super().__init__()
        self.opset = opset
        graph = model.graph
        self.input_name = next(
            i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}
        )
        self.output_name = graph.output[0].name
        self._constants: dict[str, str] = {}  # ONNX value name -> buffer name
        for index, tensor in enumerate(graph.initializer):
            self._add_constant(tensor.name, numpy_helper.to_array(tensor), index)
        self.nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
        for node in graph.node:
            if node.op_type == "Constant":
                self._add_constant(node.output[0], _constant_value(node), len(self._constants))
            else:
                self.nodes.append((node.op_type, list(node.input), list(node.output), _attributes(node)))

    def _add_constant(self, name: str, value: np.ndarray, index: int) -> None:
        buffer = f"constant_{index}"
        self.register_buffer(buffer, torch.from_numpy(np.array(value, copy=True)))
        self._constants[name] = buffer

    def forward(self, x: Tensor) -> Tensor:
        values: dict[str, Tensor | None] = {"": None, self.input_name: x}
        for name, buffer in self._constants.items():
            values[name] = getattr(self, buffer)
        for op, inputs, outputs, attrs in self.nodes:
            result = OPERATORS[op]([values[name] for name in inputs], attrs, self.opset)
            values[outputs[0]] = result
        output = values[self.output_name]
        assert output is not None
        return output


class OnnxClassifier(nn.Module):
    """An ONNX model as a torch module: onnxruntime when no gradient is needed, :class:`OnnxGraph` when
    one is. Outputs are float32 on the input's device."""

    def __init__(self, session: Any, graph: OnnxGraph, path: Path) -> None:
        super().__init__()
        self.session = session
        self.graph = graph
        self.path = path
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name
        # An empty parameter gives the module a device for code that asks ``next(model.parameters())``.
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def run_onnxruntime(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self._output], {self._input: array})
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self.graph(x.float()).float()
        return self.run_onnxruntime(x)


# -- loading -------------------------------------------------------------------------------------------------
def _fail(path: Path, reason: str) -> OnnxError:
    return OnnxError(f"{path}: {reason}")


def _all_tensors(graph: Any) -> list[Any]:
    tensors = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                tensors.append(attribute.t)
            tensors.extend(attribute.tensors)
    return tensors


def _inline_external_data(model: Any, path: Path, max_bytes: int) -> None:
    """Read tensors stored in external files (what ``torch.onnx.export`` writes by default) into the
    model. Only a plain file name in the model's own folder is accepted: no path, no link, no "..", so
    a file cannot make the evaluator read another submission's files."""
    import onnx

    total = 0
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        name = info.get("location", "")
        source = path.parent / name
        if not name or name != Path(name).name or name in (".", "..") or "\\" in name:
            raise _fail(path, f"stores tensor {tensor.name!r} in {name!r}, not a file name in its own folder")
        if source.is_symlink() or not source.is_file():
            raise _fail(
                path, f"stores tensor {tensor.name!r} in {name!r}, which is not a regular file beside it"
            )
        offset, length = int(info.get("offset", 0)), info.get("length")
        size = source.stat().st_size
        length = size - offset if length is None else int(length)
        total += length
        if offset < 0 or length < 0 or offset + length > size or total > max_bytes:
            raise _fail(
                path, f"tensor {tensor.name!r}: bytes {offset}..{offset + length} of {name!r} do not exist"
            )
        with open(source, "rb") as stream:
            stream.seek(offset)
            tensor.raw_data = stream.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _dims(value_info: Any) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def load_onnx(
    path: str | Path,
    input_shape: Sequence[int],
    *,
    threads: int | None = None,
    max_bytes: int = 256 << 20,
    max_elements: int = 1 << 24,
) -> OnnxClassifier:
    """Load and check an ONNX classifier for inputs of shape ``(N, *input_shape)``.

    :param threads: onnxruntime's intra-op threads (default: torch's).
    :param max_bytes: the largest file accepted.
    :param max_elements: the largest intermediate tensor accepted, in elements per input.
    :raises OnnxError: one line naming the file and the problem.
    """
    import onnx
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise _fail(path, f"{size} bytes, more than the {max_bytes} accepted")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # protobuf's DecodeError and friends
        raise _fail(path, f"not an ONNX model (it does not parse: {type(error).__name__})") from None
    _inline_external_data(model, path, max_bytes)
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        detail = " ".join(str(error).split())[:200]
        raise _fail(path, f"not a valid ONNX model ({detail})") from None
    graph = model.graph
    if len(model.functions):
        raise _fail(path, "defines local functions, which are not supported; export without them")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    unsupported = sorted(
        {
            f"{n.op_type}" + (f" (domain {n.domain})" if n.domain not in ("", "ai.onnx") else "")
            for n in graph.node
            if n.domain not in ("", "ai.onnx") or (n.op_type not in OPERATORS and n.op_type != "Constant")
        }
    )
    if unsupported:
        raise _fail(
            path, f"uses unsupported operator(s) {', '.join(unsupported)} (supported: {', '.join(OPERATORS)})"
        )
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise _fail(path, f"operator {node.op_type} holds a sub-graph, which is not supported")
        if node.op_type in _SINGLE_OUTPUT and len([o for o in node.output if o]) > 1:
            raise _fail(path, f"uses the extra outputs of {node.op_type}, which are not supported")
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or not graph.output:
        raise _fail(
            path, f"has {len(inputs)} inputs and {len(graph.output)} outputs; a classifier has 1 and 1"
        )
    expected = ["batch", *input_shape]
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise _fail(path, "its input is not float32")
    dims = _dims(inputs[0])
    shown = f"({', '.join(map(str, dims))})"
    if len(dims) != len(expected) or any(
        isinstance(d, int) and d > 0 and d != e for d, e in zip(dims[1:], input_shape, strict=False)
    ):
        raise _fail(
            path,
            f"takes inputs of shape {shown}; the dataset's are (N, {', '.join(map(str, input_shape))})",
        )
    if isinstance(dims[0], int) and dims[0] > 0:
        raise _fail(
            path,
            f"has a fixed batch size of {dims[0]} (input shape {shown}); export it with a dynamic batch "
            "dimension: torch.onnx.export(..., dynamic_shapes=({0: 'batch'},)) or dynamic_axes",
        )
    _check_sizes(model, input_shape, max_elements, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:
        detail = " ".join(str(error).split())[:200]
        raise _fail(path, f"onnxruntime cannot load it ({detail})") from None
    try:
        torch_graph = OnnxGraph(model, opset)
    except _Unsupported as error:
        raise _fail(path, f"unsupported: {error}") from None
    return OnnxClassifier(session, torch_graph, path)


def _check_sizes(model: Any, input_shape: Sequence[int], max_elements: int, path: Path) -> None:
    """Infer every intermediate shape for one input; refuse a graph that does not fit the dataset's
    inputs or makes a tensor larger than ``max_elements``."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    initializers = {t.name for t in probe.graph.initializer}
    graph_input = next(i for i in probe.graph.input if i.name not in initializers)
    dims = graph_input.type.tensor_type.shape.dim
    for dim, value in zip(dims, [1, *input_shape], strict=True):
        dim.Clear()
        dim.dim_value = value
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True, data_prop=True)
    except Exception as error:
        detail = " ".join(str(error).split())[:200]
        raise _fail(
            path, f"does not fit inputs of shape (N, {', '.join(map(str, input_shape))}) ({detail})"
        ) from None
    values = [*inferred.graph.value_info, *inferred.graph.output]
    for value in values:
        shape = _dims(value)
        if shape and all(isinstance(d, int) and d > 0 for d in shape):
            if math.prod(shape) > max_elements:  # type: ignore[arg-type]
                raise _fail(
                    path,
                    f"makes a tensor {value.name!r} of {math.prod(shape)} elements per input "  # type: ignore[arg-type]
                    f"(more than {max_elements})",
                )


def check_agreement(model: OnnxClassifier, x: np.ndarray, *, tolerance: float = 1e-3) -> None:
    """Refuse a model whose torch evaluation (gradients) and onnxruntime evaluation (labels) disagree on
    ``x``: different top labels, or outputs further apart than ``tolerance`` times their scale."""
    inputs = torch.as_tensor(x, dtype=torch.float32)
    try:
        with torch.no_grad():
            reference = model.run_onnxruntime(inputs)
            evaluated = model.graph(inputs).float()
    except _Unsupported as error:
        raise _fail(model.path, f"unsupported: {error}") from None
    except Exception as error:
        detail = " ".join(str(error).split())[:200]
        raise _fail(model.path, f"evaluation failed ({type(error).__name__}: {detail})") from None
    if reference.shape != evaluated.shape:
        raise _fail(
            model.path, f"onnxruntime gives shape {tuple(reference.shape)}, torch {tuple(evaluated.shape)}"
        )
    scale = float(reference.abs().max()) + 1.0
    gap = float((reference - evaluated).abs().max())
    if gap > tolerance * scale or not torch.equal(reference.argmax(1), evaluated.argmax(1)):
        raise _fail(
            model.path,
            f"onnxruntime and the torch evaluation of its graph disagree (largest difference {gap:.3g}); "
            "its gradients would not be those of its labels",
        )
