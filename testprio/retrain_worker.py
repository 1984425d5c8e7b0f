"""The retrain stage's child process: fine-tune a PyTorch or Keras model, one framework per
process (as ``testprio.convert.worker``: TensorFlow and torch are never imported together).

``python -m testprio.retrain_worker REQUEST.json`` reads the request that
``testprio.retrain._retrain_in_child`` writes (model file and format, the arrays in an
``.npz``, the jobs, the settings), fine-tunes a fresh copy of the model for each job
(training reference plus the job's selected pool rows, ``epochs`` passes, batch order and
framework randomness from the job's seed), and writes ``{"accuracies": {key: accuracy}}``
or ``{"error": sentence}``. It prints ``done N/M`` after each job.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from testprio.convert.worker import SAVE_LINES, describe, serve_request


def _training_set(arrays: Any, selected: list[int]) -> tuple[np.ndarray, np.ndarray]:
    picked = np.asarray(selected, dtype=np.int64)
    x = np.concatenate([arrays["x_train"], arrays["x_pool"][picked]])
    y = np.concatenate([arrays["y_train"], arrays["y_pool"][picked]]).astype(np.int64)
    return x, y


def _finetune_pytorch(request: dict, arrays: Any) -> dict[str, float]:
    import torch

    from testprio.convert.pytorch import _flatten, _load

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one thread: the same sums in the same order on every machine
    loaded = _load(request["source"], request["format"], request["source_name"])
    module = loaded if request["format"] == "torchscript" else loaded.module()
    initial = {name: value.clone() for name, value in module.state_dict().items()}
    index, kind = request["output_index"], request["output_kind"]

    def class_scores(x: torch.Tensor) -> torch.Tensor:
        return _flatten(module(x))[1][index]

    def set_mode(train: bool) -> None:
        try:
            module.train(train)
        except (NotImplementedError, RuntimeError):
            pass  # an exported program's module keeps the mode it was exported in

    x_test = torch.from_numpy(arrays["x_test"])
    y_test = torch.from_numpy(arrays["y_test"].astype(np.int64))
    accuracies = {}
    for done, job in enumerate(request["jobs"], start=1):
        module.load_state_dict(initial)
        torch.manual_seed(job["seed"])  # dropout and other layer randomness
        generator = torch.Generator().manual_seed(job["seed"])
        x, y = (torch.from_numpy(a) for a in _training_set(arrays, job["selected"]))
        parameters = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=request["learning_rate"])
        set_mode(True)
        for _ in range(request["epochs"]):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(order), request["batch_size"]):
                rows = order[start : start + request["batch_size"]]
                scores = class_scores(x[rows])
                if kind == "probabilities":
                    loss = torch.nn.functional.nll_loss(torch.log(scores.clamp_min(1e-12)), y[rows])
                else:
                    loss = torch.nn.functional.cross_entropy(scores, y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        set_mode(False)
        with torch.no_grad():
            predicted = torch.cat(
                [
                    class_scores(x_test[i : i + 512]).argmax(dim=1)
                    for i in range(0, len(x_test), 512)
                ]
            )
        accuracies[job["key"]] = (
            float((predicted == y_test).double().mean()) if len(y_test) else 0.0
        )
        print(f"done {done}/{len(request['jobs'])}", flush=True)
    return accuracies


def _finetune_keras(request: dict, arrays: Any) -> dict[str, float]:
    from testprio.errors import TestprioError

    if request["format"] not in ("keras", "keras_h5"):
        raise TestprioError(
            f"a TensorFlow SavedModel cannot be fine-tuned by testprio; save the model with "
            f"{SAVE_LINES['keras']} and evaluate that file."
        )
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = keras.models.load_model(request["source"], compile=False)
    initial = model.get_weights()
    index, kind = request["output_index"], request["output_kind"]
    if len(model.outputs) > 1:
        model = keras.Model(model.inputs, model.outputs[index])
    accuracies = {}
    for done, job in enumerate(request["jobs"], start=1):
        model.set_weights(initial)
        keras.utils.set_random_seed(job["seed"])
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=request["learning_rate"]),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=kind == "logits"),
        )
        x, y = _training_set(arrays, job["selected"])
        model.fit(
            x,
            y,
            epochs=request["epochs"],
            batch_size=request["batch_size"],
            shuffle=True,
            verbose=0,
        )
        scores = model.predict(arrays["x_test"], batch_size=512, verbose=0)
        predicted = np.asarray(scores).argmax(axis=1)
        accuracies[job["key"]] = float((predicted == arrays["y_test"]).mean())
        print(f"done {done}/{len(request['jobs'])}", flush=True)
    return accuracies


FINETUNERS: dict[str, Callable[[dict, Any], dict[str, float]]] = {
    "pytorch": _finetune_pytorch,
    "tensorflow": _finetune_keras,
}


def _finetune(request: dict) -> dict:
    with np.load(request["data"]) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return {"accuracies": FINETUNERS[request["framework"]](request, arrays)}


def worker_main(argv: list[str]) -> int:
    """``python -m testprio.retrain_worker REQUEST.json``: fine-tune, write the accuracies."""
    return serve_request(
        argv,
        _finetune,
        lambda request, exc: (
            f"fine-tuning model {request['source_name']} failed ({describe(exc)}); check "
            "that the model trains in its framework on inputs of the data's shape, or "
            "pass its ONNX export, whose classifier head is retrained instead."
        ),
    )


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
