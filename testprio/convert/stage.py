"""The convert stage: the user's model -> ``model/model.onnx`` + ``model/model.json``.

Its names are re-exported by ``testprio.convert`` (import them from there).

1. **Detect** what the model is from its content (``MODEL_FORMATS``, chosen by table: zip
   members, magic bytes, the files of a folder), never by importing a framework.
2. **Convert** with the framework's converter (``CONVERTERS``): ONNX passes through; every
   other framework converts in a child process of its own (``testprio.convert.worker``), which
   also runs the source model on the parity samples.
3. **Validate** the ONNX model: the checker (full check, every operator defined by its
   opset), ONNX Runtime loads it, one float input whose shape fits the pool's samples, one
   class-score output, and whether that output holds logits or probabilities
   (``output_kind``).
4. **Parity**: the ONNX model and the source framework on the same samples (pool samples,
   topped up with random ones in the pool's value range); the run fails when their class
   probabilities differ by more than ``parity_tolerance``.
5. **Model checks** (``testprio.convert.checks``): deterministic, batch independent, finite,
   rows of K classes. A failed check warns, or fails the run with ``strict_model_checks``.

A model whose input fixes the batch size (at 1, say) still converts and scores: it runs that
many samples at a time (``testprio.model.run_class_output``), with a warning that names the
fix. Everything lands in ``model.json``; ``model.onnx`` is published only when all of it passed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass

import numpy as np

from testprio import scratch, storage
from testprio.convert.checks import failed_checks, max_difference, run_model_checks
from testprio.convert.worker import SAVE_LINES
from testprio.errors import TestprioError
from testprio.ingest.options import parse_shape
from testprio.ingest.shards import iter_shard_batches
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.metrics import looks_like_probabilities
from testprio.model import (
    TensorSpec,
    check_sample_shape,
    choose_class_output,
    choose_input,
    create_session,
    fixed_batch_size,
    graph_inputs,
    graph_outputs,
    load_onnx,
    model_facts,
    produced_by_softmax,
    run_class_output,
)
from testprio.score import class_probabilities

log = get_logger("convert")

OUTPUT_KINDS = ("auto", "logits", "probabilities")
DETECTION_SAMPLES = 64
# Parity runs on at least this many samples: a small pool is topped up with random ones.
PARITY_MIN_SAMPLES = 16
# Default largest difference in any class probability between the ONNX model and its source.
# Every score is computed from probabilities, and 1e-3 moves gini by at most ~2e-3, well
# below what reorders a ranking in practice; float32 round-off between frameworks is ~1e-6,
# while a real conversion fault (a dropped layer, wrong weights or layout) shows as 1e-2+.
DEFAULT_PARITY_TOLERANCE = 1e-3
# Values of the source output below this count as this much in the relative difference.
RELATIVE_FLOOR = 1e-6


# --- converters --------------------------------------------------------------------------


@dataclass(frozen=True)
class Converter:
    """How models of one framework become ONNX."""

    framework: str
    label: str
    module: str | None  # converts in a child process (convert_worker); None: ONNX as is


CONVERTERS: dict[str, Converter] = {
    converter.framework: converter
    for converter in (
        Converter("onnx", "ONNX", None),
        Converter("pytorch", "PyTorch", "testprio.convert.pytorch"),
        Converter("tensorflow", "TensorFlow", "testprio.convert.tensorflow"),
        Converter("paddle", "PaddlePaddle", "testprio.convert.paddle"),
    )
}


# --- detection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFormat:
    """One way a framework saves a model."""

    name: str
    framework: str | None  # None: testprio refuses it (``refusal`` says why and what to do)
    description: str
    weights: str = ""  # the file that must lie beside the graph ({stem}: the graph's name)
    refusal: str = ""


_TO_PORTABLE = (
    f"save it as TorchScript with {SAVE_LINES['torchscript']} or as an exported program "
    f"with {SAVE_LINES['exported_program']}"
)
MODEL_FORMATS: dict[str, ModelFormat] = {
    fmt.name: fmt
    for fmt in (
        ModelFormat("onnx", "onnx", "an ONNX model"),
        ModelFormat("torchscript", "pytorch", "a PyTorch TorchScript file"),
        ModelFormat("exported_program", "pytorch", "a PyTorch exported program"),
        ModelFormat(
            "torch_module",
            None,
            "a pickled PyTorch nn.Module (torch.save)",
            refusal="needs its Python class to load and is not portable; " + _TO_PORTABLE,
        ),
        ModelFormat(
            "torch_state_dict",
            None,
            "a PyTorch state_dict (torch.save)",
            refusal="holds weights only; load them into your model and " + _TO_PORTABLE,
        ),
        ModelFormat("keras", "tensorflow", "a Keras model file (.keras)"),
        ModelFormat("keras_h5", "tensorflow", "a Keras HDF5 model file (.h5)"),
        ModelFormat(
            "saved_model",
            "tensorflow",
            "a TensorFlow SavedModel",
            weights="variables/variables.index",
        ),
        ModelFormat(
            "paddle_json",
            "paddle",
            "a PaddlePaddle inference model (.json + .pdiparams)",
            weights="{stem}.pdiparams",
        ),
        ModelFormat(
            "paddle_pdmodel",
            "paddle",
            "a PaddlePaddle inference model (.pdmodel + .pdiparams)",
            weights="{stem}.pdiparams",
        ),
    )
}

ZIP_MAGIC = b"PK\x03\x04"
# Zip members that tell zip-based formats apart, first match wins. PyTorch archives keep
# every member under one top folder; a .keras file holds config.json at its root.
ZIP_MEMBER_FORMATS = (
    (re.compile(r"(^|/)archive_format$"), "exported_program"),
    (re.compile(r"(^|/)(code/__torch__/|constants\.pkl$)"), "torchscript"),
    (re.compile(r"(^|/)data\.pkl$"), "torch_pickle"),
    (re.compile(r"^config\.json$"), "keras"),
)
MAGIC_FORMATS = ((b"\x89HDF\r\n\x1a\n", "keras_h5"),)
CONTENT_FORMATS = ((re.compile(rb'^\s*\{.{0,200}"magic"\s*:\s*"pir"', re.DOTALL), "paddle_json"),)
EXTENSION_FORMATS = {".onnx": "onnx", ".pdmodel": "paddle_pdmodel"}
# Formats a file's extension promises: when the content is not that, the file is damaged.
EXPECTED_BY_EXTENSION = {
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".pt2": "exported_program",
    ".keras": "keras",
    ".h5": "keras_h5",
    ".hdf5": "keras_h5",
}
# A pickled module names torch.nn classes; a state_dict only OrderedDict and tensors.
_MODULE_PICKLE = re.compile(rb"torch\.nn\.modules|__main__")
FOLDER_GRAPH_SUFFIXES = {".json": "paddle_json", ".pdmodel": "paddle_pdmodel"}
HEAD_BYTES = 256


@dataclass(frozen=True)
class DetectedModel:
    """A model's format and the files the converter needs, relative to ``base``."""

    uri: str
    format: ModelFormat
    base: str
    graph: str  # the path the converter opens, relative to base ("" = the folder itself)
    files: tuple[str, ...]

    @property
    def name(self) -> str:
        return os.path.basename(self.uri.rstrip("/"))


def _split(uri: str) -> tuple[str, str]:
    base, _, name = uri.rstrip("/").rpartition("/")
    if not base:
        base = "/" if uri.startswith("/") else "."
    return base, name


def _head(uri: str) -> bytes:
    with storage.open_read(uri) as handle:
        return handle.read(HEAD_BYTES)


def _zip_format(uri: str, name: str) -> str | None:
    try:
        with storage.open_read(uri) as handle, zipfile.ZipFile(handle) as archive:
            members = archive.namelist()
            fmt = next(
                (fmt for pattern, fmt in ZIP_MEMBER_FORMATS if any(map(pattern.search, members))),
                None,
            )
            if fmt == "torch_pickle":
                data = next(m for m in members if m.endswith("data.pkl"))
                pickled = archive.read(data)
                return "torch_module" if _MODULE_PICKLE.search(pickled) else "torch_state_dict"
            return fmt
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise TestprioError(
            f"model {name} is a damaged zip archive ({exc}); PyTorch and Keras files are zip "
            "archives, so copy or save it again, as it may be truncated."
        ) from None


def _file_format(uri: str, name: str) -> str | None:
    head = _head(uri)
    if head.startswith(ZIP_MAGIC):
        return _zip_format(uri, name)
    for magic, fmt in MAGIC_FORMATS:
        if head.startswith(magic):
            return fmt
    for pattern, fmt in CONTENT_FORMATS:
        if pattern.search(head):
            return fmt
    extension = os.path.splitext(name)[1].lower()
    if extension in EXTENSION_FORMATS:
        return EXTENSION_FORMATS[extension]
    if extension in EXPECTED_BY_EXTENSION:
        expected = MODEL_FORMATS[EXPECTED_BY_EXTENSION[extension]]
        raise TestprioError(
            f"model {name} has the extension {extension} of {expected.description} but not "
            f"its content, so it is truncated or corrupt; save it again with "
            f"{SAVE_LINES[expected.name]}."
        )
    return None


def _folder_graphs(uri: str, names: list[str]) -> list[tuple[str, str]]:
    """(file name, format) of every Paddle graph file directly in the folder."""
    graphs = []
    for name in names:
        fmt = FOLDER_GRAPH_SUFFIXES.get(os.path.splitext(name)[1].lower())
        if fmt and _file_format(storage.join(uri, name), name) == fmt:
            graphs.append((name, fmt))
    return graphs


def _detect_folder(uri: str) -> DetectedModel | None:
    names = storage.list_names(uri)
    if "saved_model.pb" in names:
        return DetectedModel(
            uri, MODEL_FORMATS["saved_model"], uri, "", tuple(storage.list_tree(uri))
        )
    graphs = _folder_graphs(uri, names)
    if len(graphs) > 1:
        shown = ", ".join(name for name, _ in graphs)
        raise TestprioError(
            f"model folder {uri} holds several Paddle inference models ({shown}); pass the "
            "graph file of the one to use as --model."
        )
    if graphs:
        ((graph, fmt),) = graphs
        return DetectedModel(uri, MODEL_FORMATS[fmt], uri, graph, (graph,))
    return None


def _with_weights(detected: DetectedModel) -> DetectedModel:
    """Add the weights file the format needs; fail when it is not beside the graph."""
    fmt = detected.format
    if not fmt.weights:
        return detected
    if fmt.name == "saved_model":
        if fmt.weights in detected.files:
            return detected
        raise TestprioError(
            f"SavedModel {detected.uri} has saved_model.pb but no {fmt.weights} beside it; "
            "copy the whole folder that model.export or tf.saved_model.save wrote."
        )
    stem = os.path.splitext(detected.graph)[0]
    weights = fmt.weights.format(stem=stem)
    folder, _ = _split(storage.join(detected.base, weights))
    if os.path.basename(weights) not in storage.list_names(folder):
        raise TestprioError(
            f"model {detected.name} has no weights file {os.path.basename(weights)} beside "
            f"it; copy the {os.path.basename(weights)} that paddle.jit.save wrote next to "
            f"{os.path.basename(detected.graph)} into the same folder."
        )
    return DetectedModel(
        detected.uri, fmt, detected.base, detected.graph, (*detected.files, weights)
    )


# What --model takes, for the sentences that refuse a model nobody can tell.
ACCEPTED_FOLDERS = (
    "a TensorFlow SavedModel folder (saved_model.pb with variables/, as model.export or "
    "tf.saved_model.save writes it) or a Paddle inference model folder (NAME.json or "
    "NAME.pdmodel with NAME.pdiparams, as paddle.jit.save writes it)"
)
ACCEPTED_FILES = (
    "an ONNX (.onnx), PyTorch TorchScript (.pt), PyTorch exported program (.pt2) or Keras "
    "(.keras, .h5) file"
)
MODEL_FILE_EXTENSIONS = {*EXTENSION_FORMATS, *EXPECTED_BY_EXTENSION}
# Subfolders looked into for a SavedModel when a folder holds no model itself.
HINT_SUBFOLDERS = 20


def _is_empty_local_folder(uri: str) -> bool:
    # storage.is_folder sees files; a local folder without any is still a folder, not a file.
    return "://" not in uri and os.path.isdir(uri)


def _models_inside(uri: str, names: list[str], folders: list[str]) -> list[str]:
    """Model files directly in the folder and SavedModel subfolders: what --model may mean."""
    files = [n for n in names if os.path.splitext(n)[1].lower() in MODEL_FILE_EXTENSIONS]
    saved_models = [
        f
        for f in folders[:HINT_SUBFOLDERS]
        if "saved_model.pb" in storage.list_names(storage.join(uri, f))
    ]
    return [storage.join(uri, name) for name in [*files, *saved_models]]


def _unrecognised_folder(uri: str) -> TestprioError:
    names, folders = storage.list_names(uri), storage.list_folders(uri)
    if not names and not folders:
        found = "is empty"
    else:
        entries = [*names, *(f"{folder}/" for folder in folders)]
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        found = f"is not a model folder (it holds {shown})"
    inside = _models_inside(uri, names, folders)
    todo = (
        f"pass {' or '.join(inside[:3])} as --model instead"
        if inside
        else "point --model at the folder or file your framework's save call wrote"
    )
    return TestprioError(
        f"folder {uri} given as --model {found}; --model takes {ACCEPTED_FOLDERS}, or "
        f"{ACCEPTED_FILES}, so {todo}."
    )


def detect_model(model_uri: str) -> DetectedModel | None:
    """What ``model_uri`` (a file or a folder) holds; None when no format matches a file.

    Raises for a folder without a model, a damaged file, a refused format, and a graph
    without its weights.
    """
    if storage.is_folder(model_uri) or _is_empty_local_folder(model_uri):
        detected = _detect_folder(model_uri)
        if detected is None:
            raise _unrecognised_folder(model_uri)
    else:
        base, name = _split(model_uri)
        fmt = _file_format(model_uri, name)
        detected = (
            DetectedModel(model_uri, MODEL_FORMATS[fmt], base, name, (name,)) if fmt else None
        )
    if detected is None:
        return None
    if detected.format.framework is None:
        raise TestprioError(
            f"model {detected.name} is {detected.format.description}, which "
            f"{detected.format.refusal}."
        )
    return _with_weights(detected)


def _check_framework_name(framework: str) -> None:
    if framework != "auto" and framework not in CONVERTERS:
        raise TestprioError(
            f"--framework '{framework}' is not supported; use auto or one of "
            f"{', '.join(CONVERTERS)}."
        )


def detect(model_uri: str, framework: str = "auto") -> DetectedModel:
    """Detect the model and check it against ``framework`` (``auto`` or a converter name)."""
    _check_framework_name(framework)
    detected = detect_model(model_uri)
    name = os.path.basename(model_uri.rstrip("/"))
    if detected is None:
        if framework == "onnx":  # an ONNX file under another extension: the checker decides
            base, graph = _split(model_uri)
            return DetectedModel(model_uri, MODEL_FORMATS["onnx"], base, graph, (graph,))
        raise TestprioError(
            f"cannot tell which framework saved {model_uri}; give {ACCEPTED_FILES}, or "
            f"{ACCEPTED_FOLDERS}; for an ONNX file under another extension, pass --framework "
            "onnx."
        )
    if framework not in ("auto", detected.format.framework):
        found = detected.format.framework
        raise TestprioError(
            f"--framework {framework} does not match model {name}, which is "
            f"{detected.format.description}; pass --framework {found} or auto."
        )
    return detected


def resolve_framework(model_uri: str, framework: str) -> str:
    """The framework of ``model_uri``: detected for ``auto``, else checked against the file."""
    return detect(model_uri, framework).format.framework


# --- the stage ---------------------------------------------------------------------------


def check_parity_tolerance(value: float) -> float:
    tolerance = float(value)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise TestprioError(
            f"--parity-tolerance {value} must be a finite number, zero or more (default "
            f"{DEFAULT_PARITY_TOLERANCE:g})."
        )
    return tolerance


def convert(
    layout: RunLayout,
    model_uri: str,
    *,
    framework: str = "auto",
    output_kind: str = "auto",
    output_name: str = "",
    input_shape: str = "",
    parity_tolerance: float = DEFAULT_PARITY_TOLERANCE,
    strict_model_checks: bool = False,
    converter: str = "",
) -> dict:
    """Convert, validate and check the model into the run; return the ``model.json`` record.

    ``converter`` is the one framework this process converts (a KFP component's image holds
    one); empty accepts any.
    """
    if output_kind not in OUTPUT_KINDS:
        raise TestprioError(
            f"--output-kind '{output_kind}' is not one of {', '.join(OUTPUT_KINDS)}."
        )
    tolerance = check_parity_tolerance(parity_tolerance)
    started = time.time()
    detected = detect(model_uri, framework)
    chosen = CONVERTERS[detected.format.framework]
    if converter and converter != chosen.framework:
        raise TestprioError(
            f"model {detected.name} is {detected.format.description}, but this pipeline was "
            f"built to convert {CONVERTERS[converter].label} models; build it for "
            f"{chosen.framework} (testprio compile --framework {chosen.framework}) or run "
            "it with testprio run, which picks the converter itself."
        )
    x, sample_ids = pool_samples(layout)
    with (
        storage.local_folder(detected.base, list(detected.files)) as folder,
        storage.atomic_path(layout.model_onnx) as onnx_path,
    ):
        local_source = os.path.join(folder, detected.graph) if detected.graph else folder
        samples, random_samples = parity_samples(x)
        if chosen.module is None:
            _copy_file(local_source, onnx_path)
            conversion, source_outputs = None, None
        else:
            conversion, source_outputs = _convert_in_child(
                chosen, detected, local_source, onnx_path, samples, input_shape
            )
        record = _validate_and_check(
            detected,
            chosen,
            onnx_path,
            x=x,
            sample_ids=sample_ids,
            samples=samples,
            random_samples=random_samples,
            source_outputs=source_outputs,
            conversion_error=(conversion or {}).get("source_error", ""),
            output_kind=output_kind,
            output_name=output_name,
            tolerance=tolerance,
            strict=bool(strict_model_checks),
        )
        record["conversion"] = conversion
        record["conversion_seconds"] = round(time.time() - started, 3)
    storage.write_json(layout.model_json, record)
    log.info(
        "model %s (%s): input '%s' %s, class output '%s' (%s)",
        detected.name,
        detected.format.name,
        record["input"]["name"],
        record["input"]["shape"],
        record["class_output"]["name"],
        record["output_kind"],
    )
    return record


def _copy_file(source: str, target: str) -> None:
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(1 << 20):
            writer.write(chunk)


def pool_samples(layout: RunLayout) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``DETECTION_SAMPLES`` samples ``(N, *shape)`` of the pool's first shard, and ids."""
    manifest = storage.read_json(layout.data_manifest)
    shard = next((s for s in manifest["shards"] if s["rows"]), None)
    if shard is None:
        raise TestprioError("every sample of the pool was quarantined; nothing can be scored.")
    uri = storage.join(layout.data_dir, shard["name"])
    batch, x = next(iter_shard_batches(uri, DETECTION_SAMPLES))
    return np.array(x, dtype=np.float32), batch.column("sample_id").to_numpy()


def parity_samples(x: np.ndarray, *, minimum: int = PARITY_MIN_SAMPLES) -> tuple[np.ndarray, int]:
    """The pool samples topped up to ``minimum`` with seeded uniform samples in their range.

    Returns ``(samples, number of random samples added)``.
    """
    missing = minimum - len(x)
    if missing <= 0:
        return x, 0
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    extra = np.random.default_rng(0).uniform(low, high, (missing, *x.shape[1:]))
    return np.concatenate([x, extra.astype(np.float32)]), missing


def _convert_in_child(
    converter: Converter,
    detected: DetectedModel,
    local_source: str,
    onnx_path: str,
    samples: np.ndarray,
    input_shape: str,
) -> tuple[dict, list[np.ndarray] | None]:
    """Run ``python -m testprio.convert.worker`` for one conversion; return its facts and the
    source model's outputs on ``samples`` (None when the source model failed to run)."""
    with scratch.folder("convert") as work:
        request = {
            "module": converter.module,
            "format": detected.format.name,
            "source": local_source,
            "source_name": detected.name,
            "target": onnx_path,
            "input_shape": list(parse_shape(input_shape) or ()) or None,
            "pool_shape": list(samples.shape[1:]),
            "samples": os.path.join(work, "samples.npy"),
            "outputs": os.path.join(work, "outputs.npz"),
            "result": os.path.join(work, "result.json"),
        }
        np.save(request["samples"], samples)
        request_path = os.path.join(work, "request.json")
        with open(request_path, "w", encoding="utf-8") as handle:
            json.dump(request, handle)
        log.info("converting %s with the %s converter", detected.name, converter.label)
        completed = subprocess.run(
            [sys.executable, "-m", "testprio.convert.worker", request_path],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
        if not os.path.exists(request["result"]):
            tail = "\n".join(completed.stdout.strip().splitlines()[-20:])
            log.warning("the %s converter's last output:\n%s", converter.label, tail)
            raise TestprioError(
                f"the {converter.label} converter stopped without a result (exit status "
                f"{completed.returncode}) while converting model {detected.name}; check that "
                f"the model loads in {converter.label} (the log shows the converter's output)."
            )
        with open(request["result"], encoding="utf-8") as handle:
            result = json.load(handle)
        if "error" in result:
            raise TestprioError(result["error"])
        conversion = result["conversion"]
        log.info(
            "converted %s with %s %s in %.2f s",
            detected.name,
            conversion.get("converter"),
            conversion.get("converter_version"),
            conversion["seconds"],
        )
        if result["source_error"]:
            conversion["source_error"] = result["source_error"]
            return conversion, None
        with np.load(request["outputs"]) as archive:
            outputs = [archive[f"arr_{i}"] for i in range(result["source_outputs"])]
        return conversion, outputs


def _open_session(onnx_path: str, source_name: str):
    try:
        return create_session(onnx_path)
    except TestprioError:
        raise
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        import onnxruntime

        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise TestprioError(
            f"ONNX Runtime {onnxruntime.__version__} cannot load model {source_name} "
            f"({message}); the model may use an operator this ONNX Runtime does not "
            "implement, so convert it with another opset or upgrade onnxruntime."
        ) from None


# How to save each format with a dynamic batch axis, for the fixed-batch warning.
DYNAMIC_BATCH_LINES = {
    **SAVE_LINES,
    "onnx": (
        "torch.onnx.export(model, (example,), 'model.onnx', dynamo=True, "
        "dynamic_shapes=({0: torch.export.Dim('batch')},)) from PyTorch, or python -m "
        "tf2onnx.convert --saved-model DIR --output model.onnx from a TensorFlow model whose "
        "input batch axis is None"
    ),
}


def _warn_fixed_batch(input_spec: TensorSpec, detected: DetectedModel) -> int | None:
    """The batch size the model's input fixes (None when dynamic), with a warning: scoring
    then runs that many samples at a time (see ``run_class_output``), slower than needed."""
    fixed = fixed_batch_size(input_spec.shape)
    if fixed is not None:
        log.warning(
            "model %s fixes the batch axis of input '%s' at %d, so testprio runs it %d "
            "sample(s) at a time (slower); for full speed save it with a dynamic batch axis, "
            "e.g. %s.",
            detected.name,
            input_spec.name,
            fixed,
            fixed,
            DYNAMIC_BATCH_LINES[detected.format.name],
        )
    return fixed


def _validate_and_check(
    detected: DetectedModel,
    converter: Converter,
    onnx_path: str,
    *,
    x: np.ndarray,
    sample_ids: np.ndarray,
    samples: np.ndarray,
    random_samples: int,
    source_outputs: list[np.ndarray] | None,
    conversion_error: str,
    output_kind: str,
    output_name: str,
    tolerance: float,
    strict: bool,
) -> dict:
    name = detected.name
    model = load_onnx(onnx_path, name)
    input_spec = choose_input(graph_inputs(model), name)
    outputs = graph_outputs(model)
    output_spec = choose_class_output(outputs, name, output_name=output_name)
    facts = model_facts(model, os.path.getsize(onnx_path))
    check_sample_shape(input_spec, tuple(x.shape[1:]), name)
    fixed_batch = _warn_fixed_batch(input_spec, detected)
    session = _open_session(onnx_path, name)

    def run(batch: np.ndarray) -> np.ndarray:
        return run_class_output(session, input_spec.name, output_spec.name, batch, name)

    detected_kind = "probabilities" if looks_like_probabilities(run(x)) else "logits"
    kind = output_kind if output_kind != "auto" else detected_kind
    parity = None
    if converter.module is not None:
        index = [spec.name for spec in outputs].index(output_spec.name)
        if source_outputs is None:
            raise TestprioError(
                f"model {name} failed to run in {converter.label} on {len(samples)} samples of "
                f"shape {tuple(samples.shape[1:])} ({conversion_error}), so its conversion "
                "cannot be checked; make sure the model accepts the pool's samples."
            )
        parity = _parity(name, converter, run(samples), source_outputs[index:], kind, tolerance)
        parity.update(pool_samples=len(x), random_samples=random_samples)
    checks = run_model_checks(lambda batch: class_probabilities(run(batch), kind), x, sample_ids)
    _report_checks(checks, name, strict)
    return {
        "source": {
            "uri": detected.uri,
            "name": name,
            "framework": detected.format.framework,
            "format": detected.format.name,
        },
        **facts,
        "input": input_spec.as_dict(),
        "fixed_batch_size": fixed_batch,
        "class_output": output_spec.as_dict(),
        "output_kind": kind,
        "output_kind_detected": detected_kind,
        "output_kind_source": "user" if output_kind != "auto" else "detected",
        "output_from_softmax_node": produced_by_softmax(model, output_spec.name),
        "parity": parity,
        "checks": checks,
        "checks_passed": not failed_checks(checks),
        "strict_model_checks": strict,
    }


def compare_outputs(
    converted: np.ndarray, source: np.ndarray, output_kind: str, tolerance: float
) -> dict:
    """Parity figures of two ``(N, K)`` class outputs: the converted model's and the source's.

    The tolerance applies to the largest difference of any class probability.
    """
    converted = np.asarray(converted, np.float64)
    source = np.asarray(source, np.float64)
    absolute = np.abs(converted - source)
    relative = absolute / np.maximum(np.abs(source), RELATIVE_FLOOR)
    converted_probs = class_probabilities(converted, output_kind)
    source_probs = class_probabilities(source, output_kind)
    prob_difference = max_difference(converted_probs, source_probs)
    differing = int((converted_probs.argmax(axis=1) != source_probs.argmax(axis=1)).sum())
    return {
        "samples": len(source),
        "max_abs_diff": max_difference(converted, source),
        "max_rel_diff": float(np.nan_to_num(relative, nan=np.inf).max()) if relative.size else 0.0,
        "max_abs_diff_probabilities": prob_difference,
        "predicted_class_differs": differing > 0,
        "predicted_class_differences": differing,
        "tolerance": tolerance,
        "passed": prob_difference <= tolerance,
    }


def _parity(
    name: str,
    converter: Converter,
    converted: np.ndarray,
    source_outputs: list[np.ndarray],
    kind: str,
    tolerance: float,
) -> dict:
    """Compare the class output with the source's (``source_outputs[0]``); fail past tolerance."""
    source = source_outputs[0] if source_outputs else None
    if source is None or np.shape(source) != converted.shape:
        got = np.shape(source) if source is not None else "no such output"
        raise TestprioError(
            f"the ONNX conversion of model {name} gives its class output shape "
            f"{converted.shape} but {converter.label} gives {got} for the same samples; "
            "convert the model to ONNX yourself and pass the .onnx file."
        )
    figures = compare_outputs(converted, source, kind, tolerance)
    log.info(
        "parity with %s on %d samples: max abs difference %.3g (probabilities %.3g), "
        "predicted class differs for %d",
        converter.label,
        figures["samples"],
        figures["max_abs_diff"],
        figures["max_abs_diff_probabilities"],
        figures["predicted_class_differences"],
    )
    if not figures["passed"]:
        raise TestprioError(
            f"the ONNX conversion of model {name} does not match {converter.label}: on "
            f"{figures['samples']} samples its class probabilities differ by up to "
            f"{figures['max_abs_diff_probabilities']:.3g} (tolerance {tolerance:g}; raw "
            f"outputs by up to {figures['max_abs_diff']:.3g}, relative "
            f"{figures['max_rel_diff']:.3g}) and the predicted class differs for "
            f"{figures['predicted_class_differences']}; check the model's layers for ones "
            "the converter mistranslates, or raise --parity-tolerance if this is acceptable."
        )
    return figures


def _report_checks(checks: dict, source_name: str, strict: bool) -> None:
    failed = failed_checks(checks)
    if not failed:
        return
    described = "; ".join(f"{name}: {record['detail']}" for name, record in failed.items())
    if strict:
        raise TestprioError(
            f"model {source_name} failed {len(failed)} model check(s) ({described}); fix the "
            "model (export it in eval mode, without randomness or batch statistics) or run "
            "without --strict-model-checks to only warn."
        )
    log.warning("model %s failed model check(s): %s", source_name, described)
