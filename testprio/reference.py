"""Reference: the reference pool (``--train-data``) -> what coverage and surprise compare with.

The reference is ingested with the pool's own preprocessing into ``{run}/reference/data/``,
run once through the model with its hidden layers as extra outputs, and summarised as

- ``{run}/reference/surprise.npz``: the surprise-adequacy reference (LSA, DSA, MDSA) of the
  last chosen layer, made a vector by ``--surprise-reduce`` (a feature map's mean over space,
  or the whole map flattened), reference classes = the model's predicted classes (as dnn-tip
  does), ``testprio.surprise.SurpriseReference.to_bytes``;
- ``{run}/reference/profile.json``: the chosen layers, the coverage parameters and the
  per-unit ``NeuronProfile`` (min, max, mean, std) of every layer. Written last: its
  presence says the reference is complete, and makes each score task compute coverage and
  surprise.

Both are published atomically; a retried task whose profile exists skips the work.
"""

from __future__ import annotations

import numpy as np
import onnx

from testprio import activations, coverage, ingest, storage, surprise
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.model import FLOAT_INPUT_TYPES, TensorSpec, create_session

log = get_logger("reference")

REFERENCE_FOLDER = "reference"
PROFILE_VERSION = 1


def reference_layout(layout: RunLayout) -> RunLayout:
    """The reference pool's own layout: ``{run}/reference/`` (its shards in ``data/``)."""
    return RunLayout(storage.join(layout.uri, REFERENCE_FOLDER))


def profile_uri(layout: RunLayout) -> str:
    return storage.join(layout.uri, REFERENCE_FOLDER, "profile.json")


def surprise_uri(layout: RunLayout) -> str:
    return storage.join(layout.uri, REFERENCE_FOLDER, "surprise.npz")


def parse_layers(text: str) -> list[str]:
    """``--layers a,b`` -> ``["a", "b"]`` (empty: the default hidden layers)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def choose_layers(model: onnx.ModelProto, text: str) -> list[str]:
    """``--layers``, checked against the model, else ``activations.hidden_layer_names``."""
    chosen = parse_layers(text)
    if chosen:
        activations.with_layer_outputs(model, chosen)  # refuses unknown names in one sentence
        return chosen
    found = activations.hidden_layer_names(model)
    if not found:
        raise TestprioError(
            "the ONNX model has no hidden layer (Relu, Tanh, Sigmoid, Gemm, Conv, ...) for "
            "coverage and surprise adequacy; name its tensors with --layers, or leave out "
            "--train-data."
        )
    return found


class HiddenPass:
    """One ONNX Runtime session that returns the class output, the hidden layers' flat
    ``(n, units)`` activations (a feature map's mean over space, for coverage) and the last
    layer's surprise vectors (reduced by ``surprise_reduce``) of a batch in the same run."""

    def __init__(
        self,
        layout: RunLayout,
        layers: list[str],
        *,
        surprise_reduce: str = surprise.DEFAULT_REDUCE,
        device: str = "auto",
    ):
        self.surprise_reduce = activations.check_reduction(surprise_reduce)
        record = storage.read_json(layout.model_json)
        self.input = TensorSpec(**record["input"])
        self.output_name = record["class_output"]["name"]
        self.source_name = record["source"]["name"]
        self.layers = list(layers)
        self.model = onnx.load_from_string(storage.read_bytes(layout.model_onnx))
        extended = activations.with_layer_outputs(self.model, self.layers)
        self.session = create_session(extended.SerializeToString(), device=device)
        self._input_type = FLOAT_INPUT_TYPES.get(self.session.get_inputs()[0].type, np.float32)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """``x`` ``(n, *shape)`` -> class outputs ``(n, K)``, per-layer ``(n, units)`` and
        the last layer's surprise vectors ``(n, surprise units)``."""
        feed = x if x.dtype == self._input_type else x.astype(self._input_type)
        try:
            outputs, *raw = self.session.run(
                [self.output_name, *self.layers], {self.input.name: feed}
            )
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            message = str(exc).strip().splitlines()[0][:300]
            raise TestprioError(
                f"model {self.source_name} failed on a batch of shape {tuple(x.shape)} with "
                f"its hidden layers as outputs ({message}); check that the data matches the "
                "model's input."
            ) from None
        layers = [activations.flatten_activation(value) for value in raw]
        vectors = (
            layers[-1]
            if self.surprise_reduce == "mean"
            else activations.flatten_activation(raw[-1], reduce=self.surprise_reduce)
        )
        return np.asarray(outputs), layers, vectors


def fit_reference(
    layout: RunLayout,
    train_data: str,
    options: ingest.IngestOptions,
    *,
    layers: str = "",
    surprise_reduce: str = surprise.DEFAULT_REDUCE,
    batch_size: int = 256,
) -> dict:
    """Ingest ``train_data`` and write ``surprise.npz`` and ``profile.json``; return figures.

    Memory: the profile streams; surprise adequacy keeps the reference's last-layer
    activations (``M x units`` float32, ``units`` = channels x positions when a feature map
    is flattened by ``surprise_reduce``), as any surprise reference must.
    """
    if storage.exists(profile_uri(layout)):
        log.info("reference: already complete, skipped")
        return {**storage.read_json(profile_uri(layout)), "skipped": True}
    where = reference_layout(layout)
    shards = ingest.ingest(where, train_data, options)
    model = onnx.load_from_string(storage.read_bytes(layout.model_onnx))
    chosen = choose_layers(model, layers)
    hidden = HiddenPass(layout, chosen, surprise_reduce=surprise_reduce, device="cpu")
    profile = coverage.NeuronProfile(chosen)
    last, predicted = [], []
    for shard in shards:
        for _, x in ingest.iter_shard_batches(shard, batch_size, columns=("x",)):
            for start in range(0, len(x), batch_size):
                outputs, acts, vectors = hidden(x[start : start + batch_size])
                profile.update(acts)
                last.append(vectors)
                predicted.append(outputs.argmax(axis=1))
    if not last:
        raise TestprioError(
            f"the reference data {train_data} has no usable samples; give --train-data a "
            "pool of samples the model reads (normally its training data)."
        )
    profile.finish()
    reference = surprise.fit_reference(
        np.concatenate(last), np.concatenate(predicted), metrics=tuple(surprise.SURPRISE_METRICS)
    )
    storage.write_bytes(surprise_uri(layout), reference.to_bytes())
    record = {
        "version": PROFILE_VERSION,
        "layers": chosen,
        "layers_chosen": "--layers" if parse_layers(layers) else "default (hidden_layer_names)",
        "surprise_layer": chosen[-1],
        "surprise_reduce": surprise_reduce,
        "surprise_metrics": list(surprise.SURPRISE_METRICS),
        "coverage_params": coverage.COVERAGE_DEFAULTS,
        "units": [int(u) for u in profile.units],
        "samples": int(profile.count),
        "profile": profile.to_dict(),
    }
    storage.write_json(profile_uri(layout), record)  # last: the reference is complete
    log.info(
        "reference: %d samples, layers %s (%s units)",
        record["samples"],
        ", ".join(chosen),
        "+".join(str(u) for u in record["units"]),
    )
    return {**record, "skipped": False}


class LoadedReference:
    """What a score task reads back: the layers, the profile and the surprise reference."""

    def __init__(self, layout: RunLayout):
        record = storage.read_json(profile_uri(layout))
        self.layers: list[str] = record["layers"]
        self.coverage_params: dict[str, dict] = record["coverage_params"]
        self.units: list[int] = record["units"]
        self.profile = coverage.NeuronProfile.from_dict(record["profile"])
        self.surprise = surprise.SurpriseReference.from_bytes(
            storage.read_bytes(surprise_uri(layout))
        )
        self.surprise_metrics: list[str] = record["surprise_metrics"]
        # Profiles written before --surprise-reduce existed averaged over space.
        self.surprise_reduce: str = record.get("surprise_reduce", surprise.DEFAULT_REDUCE)

    @staticmethod
    def exists(layout: RunLayout) -> bool:
        return storage.exists(profile_uri(layout))

    def cells(self, metric: str) -> int:
        return coverage.coverage_cells(metric, self.units, **self.coverage_params[metric])
