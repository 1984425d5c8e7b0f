"""ONNX model inspection and ONNX Runtime sessions, shared by the convert and score stages."""

from __future__ import annotations

import collections
import re
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from testprio.errors import TestprioError
from testprio.log import get_logger

log = get_logger("model")

# ONNX tensor element types that testprio can feed from its float32 samples.
FLOAT_INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}
CLASS_OUTPUT_NAME_HINT = re.compile(r"prob|logit|score|softmax", re.IGNORECASE)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    type: str
    shape: list[int | str | None]

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "shape": self.shape}


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return TensorSpec(value.name, kind or "unknown", [])
    tensor = value.type.tensor_type
    type_name = f"tensor({onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name})"
    type_name = {"tensor(float32)": "tensor(float)", "tensor(float64)": "tensor(double)"}.get(
        type_name, type_name
    )
    shape: list[int | str | None] = []
    if tensor.HasField("shape"):
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            else:
                shape.append(dim.dim_param or None)
    return TensorSpec(value.name, type_name, shape)


def load_onnx(path: str, source_name: str) -> onnx.ModelProto:
    """Load and fully check an ONNX file; corrupt files get one clear sentence."""
    try:
        model = onnx.load(path)
    except Exception as exc:  # protobuf decode errors have no common base class
        raise TestprioError(
            f"model {source_name} is not a readable ONNX file ({type(exc).__name__}); "
            "check that the file is complete and was saved with onnx.save or torch.onnx.export."
        ) from None
    check_operators(model, source_name)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TestprioError(
            f"model {source_name} fails the ONNX checker ({first_line}); re-export it."
        ) from None
    return model


# Operator domains whose schemas the onnx package knows; others (onnxruntime's contrib ops,
# exporters' local functions) are left to ONNX Runtime to resolve.
STANDARD_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml"}


def check_operators(model: onnx.ModelProto, source_name: str) -> None:
    """Name the first operator that the model's opset does not define.

    A converter that cannot translate an operation leaves it in the graph under its own
    name (tf2onnx does); the checker would only say "No Op registered".
    """
    opsets = {STANDARD_DOMAINS.get(i.domain, i.domain): i.version for i in model.opset_import}
    for node in model.graph.node:
        domain = STANDARD_DOMAINS.get(node.domain)
        if domain is None or domain not in opsets:
            continue
        try:
            onnx.defs.get_schema(node.op_type, opsets[domain], domain)
        except onnx.defs.SchemaError:
            opset = f"{domain} opset" if domain else "opset"
            raise TestprioError(
                f"model {source_name} uses the operator '{node.op_type}' (node '{node.name}'), "
                f"which ONNX {opset} {opsets[domain]} does not define, so the converter could "
                "not translate it; replace that layer, or convert the model with an opset "
                "or converter that supports it."
            ) from None


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    # Older exporters list weights as inputs too; those have initializers.
    initializers = {init.name for init in model.graph.initializer}
    return [_spec(value) for value in model.graph.input if value.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(value) for value in model.graph.output]


def choose_input(inputs: list[TensorSpec], source_name: str) -> TensorSpec:
    if len(inputs) != 1:
        names = ", ".join(f"'{spec.name}'" for spec in inputs) or "none"
        raise TestprioError(
            f"model {source_name} has {len(inputs)} inputs ({names}) but testprio feeds one "
            "tensor; export the model with a single input."
        )
    spec = inputs[0]
    if spec.type not in FLOAT_INPUT_TYPES:
        raise TestprioError(
            f"model input '{spec.name}' of {source_name} has type {spec.type}; testprio feeds "
            "floating-point samples, so export the model with a float input."
        )
    return spec


def choose_class_output(
    outputs: list[TensorSpec], source_name: str, *, output_name: str = ""
) -> TensorSpec:
    """The output holding per-class scores: named, the only float 2-D one, or a hinted name."""
    if output_name:
        for spec in outputs:
            if spec.name == output_name:
                return spec
        names = ", ".join(f"'{spec.name}'" for spec in outputs)
        raise TestprioError(
            f"--output-name '{output_name}' is not an output of model {source_name} "
            f"(outputs: {names}); pick one of those."
        )
    candidates = [
        spec for spec in outputs if spec.type in FLOAT_INPUT_TYPES and len(spec.shape) in (0, 2)
    ]
    if len(candidates) > 1:
        hinted = [spec for spec in candidates if CLASS_OUTPUT_NAME_HINT.search(spec.name)]
        candidates = hinted if len(hinted) == 1 else candidates
    if len(candidates) == 1:
        return candidates[0]
    described = ", ".join(f"'{spec.name}' {spec.type} {spec.shape}" for spec in outputs)
    if not candidates:
        raise TestprioError(
            f"model {source_name} has no output of per-class scores (outputs: {described}); "
            "export a float output of shape (N, K), e.g. with zipmap disabled for scikit-learn."
        )
    raise TestprioError(
        f"model {source_name} has several outputs that could be class scores ({described}); "
        "name one with --output-name."
    )


def produced_by_softmax(model: onnx.ModelProto, output_name: str) -> bool:
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    return producers.get(output_name) == "Softmax"


def model_facts(model: onnx.ModelProto, size_bytes: int) -> dict:
    """Static facts for ``model.json``: producer, opsets, graph size, parameters."""
    op_counts = collections.Counter(node.op_type for node in model.graph.node)
    parameters = sum(int(np.prod(init.dims, dtype=np.int64)) for init in model.graph.initializer)
    return {
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "ir_version": model.ir_version,
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "inputs": [spec.as_dict() for spec in graph_inputs(model)],
        "outputs": [spec.as_dict() for spec in graph_outputs(model)],
        "node_count": len(model.graph.node),
        "op_types": dict(sorted(op_counts.items())),
        "parameter_count": parameters,
        "size_bytes": size_bytes,
    }


CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# The ONNX Runtime execution providers each device asks for, best first; CPU always comes
# last so that a session can be created on any machine.
DEVICE_PROVIDERS = {
    "auto": (CUDA_PROVIDER, CPU_PROVIDER),  # CUDA when this onnxruntime can use it, else CPU
    "cuda": (CUDA_PROVIDER, CPU_PROVIDER),  # CUDA expected: falling back to CPU is a warning
    "cpu": (CPU_PROVIDER,),
}


def execution_providers(device: str = "auto") -> list[str]:
    """Providers to request for ``device``: those of ``DEVICE_PROVIDERS`` this build has."""
    if device not in DEVICE_PROVIDERS:
        raise TestprioError(
            f"device '{device}' is not one of {', '.join(DEVICE_PROVIDERS)}; use auto on a "
            "laptop, cuda on GPU nodes."
        )
    available = ort.get_available_providers()
    return [p for p in DEVICE_PROVIDERS[device] if p in available or p == CPU_PROVIDER]


def session_device(session: ort.InferenceSession) -> str:
    """``"cuda"`` when the session really runs on the CUDA provider, else ``"cpu"``."""
    return "cuda" if CUDA_PROVIDER in session.get_providers() else "cpu"


def create_session(
    model_bytes_or_path: bytes | str, *, device: str = "auto"
) -> ort.InferenceSession:
    """An ONNX Runtime session on ``device`` (auto, cuda or cpu).

    With ``device="cuda"`` a session that ends up on the CPU (an onnxruntime without the
    CUDA provider, or one that cannot start it: no visible GPU, driver or CUDA/cuDNN
    libraries missing) still works, and a warning says so once.
    """
    providers = execution_providers(device)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with warnings.catch_warnings():
        # onnxruntime warns in its own words about a provider it lacks; we log it below.
        warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
        session = ort.InferenceSession(
            model_bytes_or_path, sess_options=options, providers=providers
        )
    used = session_device(session)
    if used == "cuda":
        # A CUDA failure in a batch should fail the task (and let KFP retry it), not switch
        # this session to the CPU behind the IO binding's back.
        session.disable_fallback()
    elif device == "cuda":
        reason = (
            "this onnxruntime has no CUDA execution provider (install onnxruntime-gpu)"
            if CUDA_PROVIDER not in providers
            else "the CUDA execution provider could not start (no visible GPU, or the NVIDIA "
            "driver or CUDA/cuDNN libraries are missing)"
        )
        log.warning("CUDA was requested but %s; scoring on the CPU instead.", reason)
    log.info("onnxruntime providers: %s", ", ".join(session.get_providers()))
    return session


class BoundRunner:
    """Runs batches through ONNX Runtime's IO binding on ``device_type`` (``"cuda"``).

    The batch goes to the device in one copy into an input buffer that is reused while the
    batch shape stays the same (every batch but a shard's last), and the class output is
    allocated on the device by ONNX Runtime and copied back once. With ``"cpu"`` the same
    code runs on any machine (the tests use that).
    """

    def __init__(
        self, session: ort.InferenceSession, input_name: str, output_name: str, device_type: str
    ) -> None:
        self._session = session
        self._input_name = input_name
        self._output_name = output_name
        self._device_type = device_type
        self._binding = session.io_binding()
        self._input: ort.OrtValue | None = None

    def __call__(self, feed: np.ndarray) -> np.ndarray:
        if self._input is not None and tuple(self._input.shape()) == feed.shape:
            self._input.update_inplace(np.ascontiguousarray(feed))
        else:
            # On the CPU an OrtValue wraps the array it is given, and update_inplace later
            # writes the next batches into it: give it a buffer of its own, never the
            # caller's (a read-only Arrow view or a memory map would be written, or crash).
            own = np.array(feed, order="C", copy=True) if self._device_type == "cpu" else feed
            self._input = ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(own), self._device_type, 0
            )
            self._binding.bind_ortvalue_input(self._input_name, self._input)
        # Bound afresh every run: a bound output keeps its last shape, and the last batch of
        # a shard is shorter.
        self._binding.bind_output(self._output_name, self._device_type, 0)
        self._session.run_with_iobinding(self._binding)
        return self._binding.copy_outputs_to_cpu()[0]


def check_sample_shape(
    input_spec: TensorSpec, sample_shape: tuple[int, ...], source_name: str
) -> None:
    """Fail with both shapes named when the data cannot feed the model's input."""
    expected = input_spec.shape[1:] if input_spec.shape else None
    if expected is None:
        return
    fits = len(expected) == len(sample_shape) and all(
        not isinstance(want, int) or want == got
        for want, got in zip(expected, sample_shape, strict=True)
    )
    if not fits:
        want = "(N, " + ", ".join(str(dim) if dim else "?" for dim in expected) + ")"
        got = "(N, " + ", ".join(str(dim) for dim in sample_shape) + ")"
        raise TestprioError(
            f"model input '{input_spec.name}' of {source_name} expects shape {want} but the "
            f"data samples have shape {got}; preprocess the data to the model's input shape "
            "or pass --input-shape."
        )


def fixed_batch_size(shape: list | None) -> int | None:
    """The batch size an input shape fixes (its first axis when a number), else None."""
    batch = shape[0] if shape else None
    return batch if isinstance(batch, int) and batch > 0 else None


def run_class_output(
    session,
    input_name: str,
    output_name: str,
    x: np.ndarray,
    source_name: str,
    *,
    runner: BoundRunner | None = None,
) -> np.ndarray:
    """Run one batch ``(N, *sample_shape)`` and return the class-score output, checked to be
    ``(N, K)``.

    A model whose input fixes the batch size at B runs B samples at a time, the last ones
    padded with copies of the last sample and their outputs dropped: ONNX Runtime refuses
    any other batch size for it. ``runner`` (IO binding, for a CUDA session) replaces a
    plain ``session.run``.
    """
    fixed = fixed_batch_size(session.get_inputs()[0].shape)
    if fixed is None or len(x) == fixed:
        return _run_batch(session, input_name, output_name, x, source_name, runner, fixed)
    padded = np.concatenate([x, np.repeat(x[-1:], -len(x) % fixed, axis=0)])
    outputs = [
        _run_batch(
            session, input_name, output_name, padded[i : i + fixed], source_name, runner, fixed
        )
        for i in range(0, len(padded), fixed)
    ]
    return np.concatenate(outputs)[: len(x)]


def _run_batch(
    session,
    input_name: str,
    output_name: str,
    x: np.ndarray,
    source_name: str,
    runner: BoundRunner | None,
    fixed: int | None,
) -> np.ndarray:
    input_type = session.get_inputs()[0].type
    feed = x if input_type == "tensor(float)" else x.astype(FLOAT_INPUT_TYPES[input_type])
    try:
        if runner is not None:
            outputs = runner(feed)
        else:
            (outputs,) = session.run([output_name], {input_name: feed})
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        message = str(exc).strip().splitlines()[0][:300]
        fixed_note = f"; its input fixes the batch size at {fixed}" if fixed else ""
        raise TestprioError(
            f"model {source_name} failed on a batch of shape {tuple(x.shape)} ({message})"
            f"{fixed_note}; check that the data matches the model's input."
        ) from None
    outputs = np.asarray(outputs)
    if outputs.ndim != 2 or outputs.shape[0] != len(x) or outputs.shape[1] < 2:
        raise TestprioError(
            f"output '{output_name}' of model {source_name} has shape {outputs.shape} for a "
            f"batch of {len(x)}; class scores must have shape (N, K) with K >= 2, so pick "
            "another output with --output-name."
        )
    return outputs


def check_finite(outputs: np.ndarray, sample_ids: np.ndarray, source_name: str) -> None:
    bad = ~np.isfinite(outputs).all(axis=1)
    if bad.any():
        ids = sample_ids[bad]
        shown = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
        raise TestprioError(
            f"model {source_name} produced NaN or Inf outputs for {len(ids)} sample(s) "
            f"(sample_id {shown}); check those inputs and the model's numerics."
        )
