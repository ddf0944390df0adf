"""ONNX models: every operator of the torch evaluation agrees with onnxruntime; models from torch's two
exporters (the documented one-line exports) load, give torch's own outputs and gradients; bad files get
one line naming the file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from evaluations.submissions.onnx_format import (  # noqa: E402
    OPERATORS,
    OnnxError,
    OnnxGraph,
    check_agreement,
    load_onnx,
)

RNG = np.random.default_rng(0)


def _model(nodes, inputs, initializers=(), opset=17, output="y", output_shape=None):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(value, name) for name, value in initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _agree(model, feeds, atol=1e-5):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, feeds)
    graph = OnnxGraph(model, model.opset_import[0].version)
    # OnnxGraph takes one input; single-node cases with more inputs pass them as initializers.
    (name, value), *_ = feeds.items()
    got = graph(torch.from_numpy(value)).detach().numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=atol, rtol=1e-5)


def _f(*shape):
    return RNG.normal(size=shape).astype(np.float32)


X = _f(2, 3, 7, 6)
CASES = {
    "conv asymmetric pads, strides, dilations, groups": (
        helper.make_node(
            "Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2], group=3
        ),
        [("w", _f(6, 1, 3, 2)), ("b", _f(6))],
        17,
    ),
    "conv SAME_UPPER": (
        helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2]),
        [("w", _f(4, 3, 2, 3))],
        17,
    ),
    "conv SAME_LOWER": (
        helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2]),
        [("w", _f(4, 3, 2, 3))],
        17,
    ),
    "max pool with pads": (
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], pads=[1, 0, 1, 1], strides=[2, 2]),
        [],
        17,
    ),
    "max pool ceil mode that tiles": (
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1),
        [],
        17,
    ),
    "average pool excluding pads": (
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 0], strides=[2, 2]),
        [],
        17,
    ),
    "average pool including pads": (
        helper.make_node(
            "AveragePool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 0, 1], count_include_pad=1
        ),
        [],
        17,
    ),
    "global average pool": (helper.make_node("GlobalAveragePool", ["x"], ["y"]), [], 17),
    "global max pool": (helper.make_node("GlobalMaxPool", ["x"], ["y"]), [], 17),
    "batch normalization": (
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3),
        [("s", _f(3)), ("b", _f(3)), ("m", _f(3)), ("v", np.abs(_f(3)) + 0.5)],
        17,
    ),
    "flatten axis 2": (helper.make_node("Flatten", ["x"], ["y"], axis=2), [], 17),
    "reshape with 0 and -1": (
        helper.make_node("Reshape", ["x", "s"], ["y"]),
        [("s", np.array([0, -1, 6], np.int64))],
        17,
    ),
    "transpose": (helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1]), [], 17),
    "softmax (opset 13)": (helper.make_node("Softmax", ["x"], ["y"], axis=1), [], 17),
    "softmax (opset 11, coerced to 2-d)": (helper.make_node("Softmax", ["x"], ["y"], axis=1), [], 11),
    "log softmax": (helper.make_node("LogSoftmax", ["x"], ["y"], axis=-1), [], 17),
    "clip": (
        helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),
        [("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32))],
        17,
    ),
    "reduce mean (attribute axes)": (
        helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0),
        [],
        17,
    ),
    "reduce mean (input axes)": (
        helper.make_node("ReduceMean", ["x", "a"], ["y"]),
        [("a", np.array([1, -1], np.int64))],
        18,
    ),
    "reduce sum": (helper.make_node("ReduceSum", ["x", "a"], ["y"]), [("a", np.array([3], np.int64))], 17),
    "leaky relu": (helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.2), [], 17),
    "elu": (helper.make_node("Elu", ["x"], ["y"], alpha=0.7), [], 17),
    "hard sigmoid": (helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4), [], 17),
    "hard swish": (helper.make_node("HardSwish", ["x"], ["y"]), [], 17),
    "gelu tanh": (helper.make_node("Gelu", ["x"], ["y"], approximate="tanh"), [], 20),
    "erf": (helper.make_node("Erf", ["x"], ["y"]), [], 17),
    "softplus": (helper.make_node("Softplus", ["x"], ["y"]), [], 17),
    "pow": (helper.make_node("Pow", ["x", "p"], ["y"]), [("p", np.array(2.0, np.float32))], 17),
    "div": (helper.make_node("Div", ["x", "d"], ["y"]), [("d", _f(1, 3, 1, 1) + 3)], 17),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_operator_agrees_with_onnxruntime(case):
    node, initializers, opset = CASES[case]
    _agree(_model([node], [("x", X.shape)], initializers, opset), {"x": X})


def test_shape_arithmetic_operators_agree_with_onnxruntime():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, Cast, Squeeze, Gemm, MatMul, Sub, Tanh: the
    chain exporters emit for a dynamic flatten."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "c"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("MatMul", ["g", "m"], ["mm"]),
        helper.make_node("Cast", ["mm"], ["d"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["d"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axis0"], ["u"]),
        helper.make_node("Squeeze", ["u", "axis0"], ["s"]),
        helper.make_node("Sub", ["s", "c2"], ["t"]),
        helper.make_node("Tanh", ["t"], ["y"]),
    ]
    initializers = [
        ("zero", np.array(-4, np.int64)),
        ("axis0", np.array([0], np.int64)),
        ("minus1", np.array([-1], np.int64)),
        ("w", _f(5, 3 * 7 * 6)),
        ("c", _f(5)),
        ("m", _f(5, 4)),
        ("c2", _f(4)),
    ]
    _agree(_model(nodes, [("x", X.shape)], initializers), {"x": X})


def _tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_the_documented_one_line_exports_give_the_models_outputs_and_gradients(tmp_path, exporter):
    model, path = _tiny_cnn(), tmp_path / "model.onnx"
    example = (torch.rand(1, 1, 8, 8),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                model,
                example,
                path,
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}},
                input_names=["input"],
            )
        else:
            pytest.importorskip("onnxscript")
            torch.onnx.export(model, example, path, dynamic_shapes=({0: "batch"},), verbose=False)
    loaded = load_onnx(path, (1, 8, 8))
    x = torch.rand(12, 1, 8, 8)
    check_agreement(loaded, x.numpy())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)  # onnxruntime
    mine, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(loaded(mine), torch.arange(12) % 10).backward()  # the torch graph
    torch.nn.functional.cross_entropy(model(theirs), torch.arange(12) % 10).backward()
    torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-6, rtol=1e-4)


def _save(model, path):
    path.write_bytes(model.SerializeToString())
    return path


def _point_external_data(model, location):
    """Make every external tensor of ``model`` name ``location`` as its file."""
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location


def _classifier(input_shape=("N", 1, 8, 8), extra_nodes=(), opset=17):
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    return _model(
        [*nodes, *extra_nodes], [("x", list(input_shape))], [("w", _f(10, 64))], opset, "y", ["N", 10]
    )


def test_a_corrupt_file_is_one_line_naming_it(tmp_path):
    good = _save(_classifier(), tmp_path / "good.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(good.read_bytes()[:-7])
    for path in (corrupt, tmp_path / "empty.onnx"):
        path.touch()
        with pytest.raises(OnnxError) as error:
            load_onnx(path, (1, 8, 8))
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(1).bytes(3000))
    with pytest.raises(OnnxError, match="noise.onnx: not"):
        load_onnx(tmp_path / "noise.onnx", (1, 8, 8))


def test_an_unsupported_operator_is_named(tmp_path):
    model = _classifier()
    model.graph.node.append(helper.make_node("TopK", ["y", "k"], ["values", "indices"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([3], np.int64), "k"))
    with pytest.raises(OnnxError, match=r"bad\.onnx: uses unsupported operator\(s\) TopK"):
        load_onnx(_save(model, tmp_path / "bad.onnx"), (1, 8, 8))
    custom = _classifier()
    custom.graph.node[1].domain = "com.example"
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(OnnxError, match=r"Gemm \(domain com.example\)"):
        load_onnx(_save(custom, tmp_path / "custom.onnx"), (1, 8, 8))
    assert "Loop" not in OPERATORS and "ConstantOfShape" not in OPERATORS


def test_an_input_shape_mismatch_is_named(tmp_path):
    path = _save(_classifier(("N", 1, 28, 28)), tmp_path / "mnist.onnx")
    with pytest.raises(
        OnnxError, match=r"mnist\.onnx: takes inputs of shape \(N, 1, 28, 28\); the dataset's are"
    ):
        load_onnx(path, (1, 8, 8))
    fixed = _save(_classifier((1, 1, 8, 8)), tmp_path / "fixed.onnx")
    with pytest.raises(OnnxError, match="fixed batch size of 1"):
        load_onnx(fixed, (1, 8, 8))
    # Declared shape fine, weights for another size: shape inference names the mismatch.
    wrong = _model(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)],
        [("x", ["N", 1, 8, 8])],
        [("w", _f(10, 784))],
        output_shape=["N", 10],
    )
    with pytest.raises(OnnxError, match=r"wrong\.onnx: does not fit inputs of shape \(N, 1, 8, 8\)"):
        load_onnx(_save(wrong, tmp_path / "wrong.onnx"), (1, 8, 8))


def test_external_data_is_read_only_from_files_beside_the_model(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    (tmp_path / "alice").mkdir()
    (tmp_path / "mallory").mkdir()
    model = _classifier()
    convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, tmp_path / "alice" / "model.onnx")  # writes weights.bin beside it
    loaded = load_onnx(tmp_path / "alice" / "model.onnx", (1, 8, 8))
    check_agreement(loaded, np.random.default_rng(2).random((4, 1, 8, 8), dtype=np.float32))
    stolen = onnx.load(tmp_path / "alice" / "model.onnx", load_external_data=False)
    _point_external_data(stolen, "../alice/weights.bin")
    with pytest.raises(OnnxError, match="not a file name in its own folder"):
        load_onnx(_save(stolen, tmp_path / "mallory" / "model.onnx"), (1, 8, 8))
    (tmp_path / "mallory" / "weights.bin").symlink_to(tmp_path / "alice" / "weights.bin")
    _point_external_data(stolen, "weights.bin")
    with pytest.raises(OnnxError, match="not a regular file beside it"):
        load_onnx(_save(stolen, tmp_path / "mallory" / "model.onnx"), (1, 8, 8))


def test_size_limits(tmp_path):
    path = _save(_classifier(), tmp_path / "model.onnx")
    with pytest.raises(OnnxError, match="more than the 100 accepted"):
        load_onnx(path, (1, 8, 8), max_bytes=100)
    with pytest.raises(OnnxError, match="elements per input"):
        load_onnx(path, (1, 8, 8), max_elements=32)


def test_a_torch_evaluation_that_disagrees_is_refused(tmp_path, monkeypatch):
    loaded = load_onnx(_save(_classifier(), tmp_path / "model.onnx"), (1, 8, 8))
    x = np.random.default_rng(3).random((6, 1, 8, 8), dtype=np.float32)
    check_agreement(loaded, x)
    monkeypatch.setitem(OPERATORS, "Gemm", lambda ins, attrs, opset: ins[0] @ ins[1].T * 1.01 + 0.5)
    with pytest.raises(OnnxError, match="disagree"):
        check_agreement(loaded, x)
