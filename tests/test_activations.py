"""Hidden-layer choice and extra graph outputs, checked against the source frameworks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from testprio.activations import (
    flatten_activation,
    hidden_layer_names,
    layer_activations,
    with_layer_outputs,
)
from testprio.errors import TestprioError
from tests.coverage_models import export_torch, sklearn_mlp, small_cnn


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    module = small_cnn()
    x = np.random.default_rng(1).normal(size=(10, 1, 8, 8)).astype(np.float32)
    model = export_torch(module, x[:2], tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    return module, model, x


def _hooked(module, x: np.ndarray, indices: list[int]) -> list[np.ndarray]:
    """Outputs of ``module[i]`` recorded by forward hooks during one forward pass."""
    import torch

    seen: dict[int, np.ndarray] = {}
    handles = [
        module[i].register_forward_hook(
            lambda _m, _inp, out, i=i: seen.__setitem__(i, out.detach().numpy())
        )
        for i in indices
    ]
    with torch.no_grad():
        module(torch.from_numpy(x))
    for handle in handles:
        handle.remove()
    return [seen[i] for i in indices]


def test_cnn_default_layers_are_the_activations_without_the_logits(cnn):
    _, model, _ = cnn
    names = hidden_layer_names(model)
    ops = {out: node.op_type for node in model.graph.node for out in node.output}
    assert [ops[n] for n in names] == ["Relu", "Tanh", "Relu"]
    assert "logits" not in names
    assert hidden_layer_names(model, limit=2) == names[1:]


def test_cnn_extra_outputs_equal_torch_forward_hooks(cnn):
    module, model, x = cnn
    layers = hidden_layer_names(model)
    session = _session(with_layer_outputs(model, layers))
    values = session.run(["logits", *layers], {"input": x})
    # Sequential indices of ReLU, Tanh, ReLU and the last Linear.
    expected = _hooked(module, x, [1, 3, 6, 7])
    for got, want in zip(values[1:], expected[:3], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values[0], expected[3], rtol=1e-5, atol=1e-5)

    logits, flat = layer_activations(session, {"input": x}, layers, outputs=["logits"])
    np.testing.assert_allclose(logits[0], expected[3], rtol=1e-5, atol=1e-5)
    assert [a.shape for a in flat] == [(10, 4), (10, 6), (10, 16)]
    np.testing.assert_allclose(flat[0], expected[0].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat[2], expected[2], rtol=1e-5, atol=1e-6)


def test_extra_outputs_are_typed_and_the_input_model_is_unchanged(cnn):
    _, model, _ = cnn
    before = model.SerializeToString()
    layers = hidden_layer_names(model)
    extended = with_layer_outputs(model, [*layers, "logits"])
    assert model.SerializeToString() == before
    # The class output is not duplicated; the layers follow it in the order given.
    assert [o.name for o in extended.graph.output] == ["logits", *layers]
    dims = [d.dim_value for d in extended.graph.output[1].type.tensor_type.shape.dim[1:]]
    assert dims == [4, 6, 6]
    onnx.checker.check_model(extended)


def test_sklearn_mlp_hidden_layers_equal_its_own_weights():
    clf, x, model = sklearn_mlp()
    layers = hidden_layer_names(model)
    # Two hidden ReLU layers; MatMul/Add before them and the softmax head are not layers.
    assert len(layers) == 2
    session = _session(with_layer_outputs(model, layers))
    probs, acts = layer_activations(session, {"X": x}, layers, outputs=["probabilities"])
    hidden, expected = x.astype(np.float64), []
    for w, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1], strict=True):
        hidden = np.maximum(hidden @ w + b, 0.0)
        expected.append(hidden)
    for got, want in zip(acts, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs[0], clf.predict_proba(x), atol=1e-5)


def test_linear_layer_without_activation_is_a_layer(tmp_path):
    from torch import nn

    module = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)).eval()
    model = export_torch(module, np.zeros((2, 4), np.float32), tmp_path / "lin.onnx")
    names = hidden_layer_names(model)
    ops = {out: node.op_type for node in model.graph.node for out in node.output}
    assert len(names) == 1 and ops[names[0]] == "Gemm" and names[0] != "logits"


def test_unknown_layer_names_the_valid_ones(cnn):
    _, model, _ = cnn
    with pytest.raises(TestprioError, match=r"layer 'nope' in --layers is not a tensor.*Relu"):
        with_layer_outputs(model, ["nope"])


def test_layer_limit_must_be_positive(cnn):
    with pytest.raises(TestprioError, match="layer limit must be at least 1"):
        hidden_layer_names(cnn[1], limit=0)


def test_flatten_activation_shapes():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 2, 4, 5))
    np.testing.assert_allclose(flatten_activation(maps), maps.mean(axis=(2, 3)), rtol=1e-6)
    seq = rng.normal(size=(3, 2, 7))
    np.testing.assert_allclose(flatten_activation(seq), seq.mean(axis=2), rtol=1e-6)
    assert flatten_activation(np.arange(3.0)).shape == (3, 1)
    dense = rng.normal(size=(3, 9)).astype(np.float32)
    assert flatten_activation(dense) is dense
    assert flatten_activation(maps).dtype == np.float32
