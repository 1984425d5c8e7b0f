"""Retraining: ONNX head retraining (in NumPy) and PyTorch fine-tuning (in a
child process) on real digits; accuracies are measured, seeded and deterministic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from testprio import retrain, stats
from testprio.errors import TestprioError
from tests.evalkit import digits, mlp_weights, save_mlp


@pytest.fixture(scope="module")
def splits():
    return digits()


@pytest.fixture(scope="module")
def data(splits) -> retrain.RetrainData:
    (xt, yt), (xp, yp), (xs, ys) = splits["train"], splits["pool"], splits["test"]
    return retrain.RetrainData(xt, yt, xp, yp, xs, ys)


def _onnx_source(path, output="logits", kind="logits") -> retrain.SourceModel:
    return retrain.SourceModel("onnx", "onnx", str(path), str(path), output, kind, path.name)


# --- ONNX: the classifier head -------------------------------------------------------------


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_linear_head_reproduces_the_model(tmp_path, splits, data, head):
    weights = mlp_weights(*splits["train"])
    path = save_mlp(tmp_path / "mlp.onnx", weights, head=head)
    found, features = retrain.head_features(_onnx_source(path), data)
    assert found.features == "hidden"
    np.testing.assert_allclose(found.weight, weights[2], rtol=1e-6)
    assert features["pool"].shape == (len(data.y_pool), 32)


def test_head_retraining_learns(tmp_path, splits, data):
    """A head with all-zero weights predicts class 0 everywhere; retrained on the training
    data it becomes a real classifier: the accuracy is measured, not copied."""
    w1, b1, w2, b2 = mlp_weights(*splits["train"])
    path = save_mlp(tmp_path / "zero.onnx", (w1, b1, np.zeros_like(w2), b2))
    jobs = [retrain.RetrainJob("none", np.array([], dtype=np.int64), 0)]
    settings = retrain.RetrainSettings(epochs=20, learning_rate=0.05)
    accuracy = retrain.retrain(_onnx_source(path), data, jobs, settings=settings)["none"]
    chance = float((data.y_test == 0).mean())
    assert accuracy > chance + 0.5
    assert accuracy * len(data.y_test) == pytest.approx(round(accuracy * len(data.y_test)))


def test_head_retraining_is_deterministic_per_seed(tmp_path, splits, data):
    path = save_mlp(tmp_path / "mlp.onnx", mlp_weights(*splits["train"]), softmax=True)
    source = _onnx_source(path, "probabilities", "probabilities")
    selected = np.arange(40)
    jobs = [retrain.RetrainJob(f"s{seed}", selected, seed) for seed in range(4)]
    jobs.append(retrain.RetrainJob("again0", selected.copy(), 0))
    first = retrain.retrain(source, data, jobs)
    second = retrain.retrain(source, data, jobs)
    assert first == second
    assert first["again0"] == first["s0"]
    assert all(0.0 <= value <= 1.0 for value in first.values())
    assert len(set(first.values())) > 1  # the seed changes the batch order, so the result


def test_model_without_linear_head_is_one_sentence(tmp_path, splits, data):
    path = save_mlp(tmp_path / "mul.onnx", mlp_weights(*splits["train"]), head="mul")
    jobs = [retrain.RetrainJob("a", np.arange(3), 0)]
    with pytest.raises(
        TestprioError, match=r"does not come from a linear layer .*PyTorch or Keras"
    ):
        retrain.retrain(_onnx_source(path), data, jobs)


def test_unsupported_framework_and_settings_are_refused(tmp_path, data):
    source = retrain.SourceModel("paddle", "paddle_json", "m", "m.onnx", "out", "logits")
    with pytest.raises(TestprioError, match=r"retraining paddle models is not supported"):
        retrain.retrain(source, data, [])
    with pytest.raises(TestprioError, match=r"--epochs 0 must be a positive number"):
        retrain.retrain(source, data, [], settings=retrain.RetrainSettings(epochs=0))


# --- PyTorch: the whole model in a child process -------------------------------------------


@pytest.fixture(scope="module")
def torch_model(tmp_path_factory, splits):
    """A small CNN trained one epoch (seeded), saved as TorchScript and exported to ONNX."""
    import torch

    from demo.train_digits import build_model, set_determinism, train

    folder = tmp_path_factory.mktemp("torch")
    set_determinism(0)
    model = train(build_model(), *splits["train"], epochs=1, seed=0).eval()
    example = torch.from_numpy(splits["pool"][0][:4])
    pt = folder / "model.pt"
    torch.jit.save(torch.jit.trace(model, example), str(pt))
    onnx_path = folder / "model.onnx"
    torch.onnx.export(
        model, (example,), str(onnx_path), dynamo=False, input_names=["input"],
        output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
    )  # fmt: skip
    with torch.no_grad():
        baseline = float(
            (
                model(torch.from_numpy(splits["test"][0])).argmax(1).numpy() == splits["test"][1]
            ).mean()
        )
    return pt, onnx_path, baseline


def test_torch_finetuning_is_measured_and_deterministic(torch_model, data):
    pt, onnx_path, baseline = torch_model
    assert onnx.load(str(onnx_path)).graph.output[0].name == "output"
    source = retrain.SourceModel("pytorch", "torchscript", str(pt), str(onnx_path), "output",
                                 "logits", "model.pt")  # fmt: skip
    selected = np.arange(20)
    jobs = [retrain.RetrainJob(f"s{seed}", selected, seed) for seed in (0, 1, 2)]
    jobs.append(retrain.RetrainJob("again", selected, 0))
    # No pool rows at all: the evaluation's no-selection control (the training data alone).
    jobs.append(retrain.RetrainJob("none", np.array([], dtype=np.int64), 0))
    progress = []
    first = retrain.retrain(source, data, jobs, progress=lambda done, total: progress.append(done))
    second = retrain.retrain(source, data, jobs)
    assert first == second  # same seeds, same accuracies, in a fresh process
    assert first["again"] == first["s0"]
    assert progress == [1, 2, 3, 4]  # four distinct fine-tunings, reported by the child
    assert all(0.0 <= value <= 1.0 for value in first.values())
    # One epoch left the model weak; three more on the training data improve it.
    assert np.mean(list(first.values())) > baseline + 0.05
    summary = stats.mean_ci([first[f"s{seed}"] for seed in (0, 1, 2)])
    assert summary[1] <= summary[0] <= summary[2]


def test_torch_model_that_cannot_load_is_one_sentence(tmp_path, torch_model, data):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not a model")
    source = retrain.SourceModel("pytorch", "torchscript", str(broken), str(torch_model[1]),
                                 "output", "logits", "broken.pt")  # fmt: skip
    with pytest.raises(TestprioError, match=r"PyTorch could not load model broken.pt"):
        retrain.retrain(source, data, [retrain.RetrainJob("a", np.arange(2), 0)])


# --- Keras and exported programs: evaluated end to end, then retrained again directly ------


def _evaluate_and_retrain_again(model_path, splits, root):
    """``run_evaluation`` of ``model_path`` (random, 2 seeds, 1 epoch, budget 10%), and the
    same two fine-tunings again through ``retrain.retrain`` (a second child process).

    Returns the evaluation and the second accuracies by seed."""
    from testprio import convert, evaluation, storage
    from testprio.layout import RunLayout
    from tests.evalkit import save_splits

    paths = save_splits(model_path.parent / "data", splits)
    options = evaluation.EvaluateOptions(prioritizers=("random",), seeds=2, epochs=1, budgets=(10,))
    result = evaluation.run_evaluation(
        root, "whole", model=str(model_path), data=str(paths["pool"]),
        train_data=str(paths["train"]), test_data=str(paths["test"]), options=options,
    )  # fmt: skip
    layout = RunLayout.create(root, "whole")
    record = storage.read_json(layout.model_json)
    source = retrain.SourceModel(
        result["retraining"]["method"], convert.detect(str(model_path)).format.name,
        str(model_path), layout.model_onnx, record["class_output"]["name"],
        record["output_kind"], model_path.name,
    )  # fmt: skip
    data = retrain.RetrainData(*(a for part in ("train", "pool", "test") for a in splits[part]))
    n_pool = len(data.y_pool)
    # random's selection for a seed is the seed's permutation of the pool: rebuild it.
    jobs = [
        retrain.RetrainJob(str(seed), np.random.default_rng(seed).permutation(n_pool)[:10], seed)
        for seed in (0, 1)
    ]
    settings = retrain.RetrainSettings(epochs=1)
    return result, retrain.retrain(source, data, jobs, settings=settings)


def _check_whole_model_retraining(evaluation, again, framework):
    assert evaluation["retraining"]["method"] == framework
    assert evaluation["model"]["framework"] == framework
    (row,) = evaluation["prioritizers"]["random"]["retrain"]
    assert len(row["accuracies"]) == 2
    for accuracy in row["accuracies"]:
        assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
        assert accuracy * 100 == pytest.approx(round(accuracy * 100))  # a share of 100 tests
    # The same selections and seeds in a fresh process give the same accuracies.
    assert [again["0"], again["1"]] == row["accuracies"]


def test_keras_model_is_fine_tuned_whole_and_deterministic(tmp_path, local_root):
    """A Keras Sequential saved as .keras (built in a child process: TensorFlow never
    enters the test process) is fine-tuned by model.fit in the retraining child."""
    from tests.evalkit import build_in_child, tiny_digits

    model = build_in_child("keras", tmp_path / "keras") / "model.keras"
    evaluation, again = _evaluate_and_retrain_again(model, tiny_digits(layout="NHWC"), local_root)
    _check_whole_model_retraining(evaluation, again, "tensorflow")
    assert evaluation["model"]["format"] == "keras"


def test_exported_program_is_fine_tuned_whole_and_deterministic(tmp_path, local_root):
    """A torch.export program with a dynamic batch axis, saved as .pt2."""
    import torch

    from tests.evalkit import tiny_digits

    splits = tiny_digits()
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    ).eval()  # fmt: skip
    example = torch.from_numpy(splits["pool"][0][:4])
    program = torch.export.export(
        module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    folder = tmp_path / "pt2"
    folder.mkdir()
    torch.export.save(program, str(folder / "model.pt2"))
    evaluation, again = _evaluate_and_retrain_again(folder / "model.pt2", splits, local_root)
    _check_whole_model_retraining(evaluation, again, "pytorch")
    assert evaluation["model"]["format"] == "exported_program"
