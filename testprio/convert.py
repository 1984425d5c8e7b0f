"""Convert: the user's model -> ``model/model.onnx`` + ``model/model.json``.

Converters are a registry keyed by framework name. This module holds the ONNX one (validate
and pass through); every model, whatever its source, is then checked the same way: the
ONNX checker, ONNX Runtime loads it, one float input whose shape fits the data, one
class-score output, and whether that output is logits or probabilities (``output_kind``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import iter_shard_batches
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.metrics import looks_like_probabilities
from testprio.model import (
    check_finite,
    check_sample_shape,
    choose_class_output,
    choose_input,
    create_session,
    graph_inputs,
    graph_outputs,
    load_onnx,
    model_facts,
    produced_by_softmax,
    run_class_output,
)

log = get_logger("convert")

OUTPUT_KINDS = ("auto", "logits", "probabilities")
DETECTION_SAMPLES = 64


def _onnx_passthrough(local_path: str, target_path: str) -> None:
    with open(local_path, "rb") as source, open(target_path, "wb") as target:
        target.write(source.read())


CONVERTERS: dict[str, Callable[[str, str], None]] = {"onnx": _onnx_passthrough}
EXTENSIONS = {".onnx": "onnx"}


def detect_framework(model_uri: str) -> str:
    extension = os.path.splitext(model_uri.rstrip("/"))[1].lower()
    if extension in EXTENSIONS:
        return EXTENSIONS[extension]
    raise TestprioError(
        f"cannot tell which framework saved {model_uri}; give an .onnx file "
        f"(supported frameworks: {', '.join(CONVERTERS)})."
    )


def resolve_framework(model_uri: str, framework: str) -> str:
    if framework == "auto":
        return detect_framework(model_uri)
    if framework not in CONVERTERS:
        raise TestprioError(
            f"--framework '{framework}' is not supported; use auto or one of "
            f"{', '.join(CONVERTERS)}."
        )
    return framework


def convert(
    layout: RunLayout,
    model_uri: str,
    *,
    framework: str = "auto",
    output_kind: str = "auto",
    output_name: str = "",
) -> dict:
    """Validate (and convert) the model into the run; return the ``model.json`` record."""
    if output_kind not in OUTPUT_KINDS:
        raise TestprioError(
            f"--output-kind '{output_kind}' is not one of {', '.join(OUTPUT_KINDS)}."
        )
    started = time.time()
    framework = resolve_framework(model_uri, framework)
    source_name = os.path.basename(model_uri.rstrip("/"))
    with (
        storage.local_copy(model_uri) as local_model,
        storage.atomic_path(layout.model_onnx) as onnx_path,
    ):
        CONVERTERS[framework](local_model, onnx_path)
        model = load_onnx(onnx_path, source_name)
        input_spec = choose_input(graph_inputs(model), source_name)
        output_spec = choose_class_output(
            graph_outputs(model), source_name, output_name=output_name
        )
        facts = model_facts(model, os.path.getsize(onnx_path))
        detected = _check_against_data(layout, onnx_path, input_spec, output_spec, source_name)
        resolved_kind = output_kind if output_kind != "auto" else detected
        record = {
            "source": {"uri": model_uri, "name": source_name, "framework": framework},
            **facts,
            "input": input_spec.as_dict(),
            "class_output": output_spec.as_dict(),
            "output_kind": resolved_kind,
            "output_kind_detected": detected,
            "output_kind_source": "user" if output_kind != "auto" else "detected",
            "output_from_softmax_node": produced_by_softmax(model, output_spec.name),
            "conversion_seconds": round(time.time() - started, 3),
        }
    storage.write_json(layout.model_json, record)
    log.info(
        "model %s: input '%s' %s, class output '%s' (%s)",
        source_name,
        input_spec.name,
        input_spec.shape,
        output_spec.name,
        resolved_kind,
    )
    return record


def _check_against_data(layout, onnx_path, input_spec, output_spec, source_name) -> str:
    """Run a few pool samples through the model: shapes must fit, outputs must be (N, K).

    Returns the detected output kind: ``probabilities`` when every row is non-negative and
    sums to one, else ``logits``.
    """
    manifest = storage.read_json(layout.data_manifest)
    shard = next((s for s in manifest["shards"] if s["rows"]), None)
    if shard is None:
        raise TestprioError("every sample of the pool was quarantined; nothing can be scored.")
    uri = storage.join(layout.data_dir, shard["name"])
    batch, x = next(iter_shard_batches(uri, DETECTION_SAMPLES))
    check_sample_shape(input_spec, tuple(x.shape[1:]), source_name)
    session = create_session(onnx_path)
    outputs = run_class_output(session, input_spec.name, output_spec.name, x, source_name)
    check_finite(outputs, batch.column("sample_id").to_numpy(), source_name)
    return "probabilities" if looks_like_probabilities(outputs) else "logits"
