"""PyTorch -> ONNX: TorchScript files (``torch.jit.save``) and exported programs
(``torch.export.save``).

TorchScript goes through torch.onnx's TorchScript exporter (the dynamo exporter cannot
trace a ScriptModule), exported programs through the dynamo exporter. Both need an example
input: ``--input-shape``, else the shape the file records (a traced module's inputs, an
exported program's example inputs), else the pool's sample shape. The ONNX input is named
``input`` and its batch axis is dynamic; an exported program saved with a fixed batch size
is exported again with a dynamic one.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
import warnings
import zipfile
from typing import Any

import numpy as np
import torch

from testprio.convert.worker import EXAMPLE_BATCH, OPSET, SAVE_LINES, describe
from testprio.errors import TestprioError

INPUT_NAME = "input"
_OPERATOR = re.compile(r"operator '([^']+)'|op='([^']+)'|OpOverload\(op='([^']+)'")


def _load_torchscript(source: str) -> torch.jit.ScriptModule:
    module = torch.jit.load(source, map_location="cpu")
    module.eval()
    return module


def _load_exported_program(source: str) -> torch.export.ExportedProgram:
    return torch.export.load(source)


LOADERS = {"torchscript": _load_torchscript, "exported_program": _load_exported_program}


@functools.lru_cache(maxsize=2)
def _load(source: str, fmt: str, source_name: str) -> Any:
    try:
        return LOADERS[fmt](source)
    except Exception as exc:  # torch raises RuntimeError, ValueError, zip and pickle errors
        raise TestprioError(
            f"PyTorch could not load model {source_name} ({describe(exc)}); check that the "
            f"file is complete and save it again with {SAVE_LINES[fmt]}."
        ) from None


# --- the example input -------------------------------------------------------------------


class _ShapeUnpickler(pickle.Unpickler):
    """Reads the shapes out of a TorchScript file's ``traced_inputs.pkl`` without loading
    tensor data or running any other code the pickle names."""

    READERS = {
        ("torch._utils", "_rebuild_tensor_v2"): lambda storage, offset, size, *rest: tuple(size),
        ("collections", "OrderedDict"): dict,
        ("torch.jit._pickle", "restore_type_tag"): lambda value, tag: value,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.READERS:
            return self.READERS[(module, name)]
        if module == "torch" and name.endswith("Storage"):  # the storage's type: unused
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not read")

    def persistent_load(self, pid: Any) -> None:
        return None


def _traced_input_shape(source: str) -> tuple[int, ...] | None:
    """The per-sample shape of a traced module's first input, if the file records it."""
    try:
        with zipfile.ZipFile(source) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/traced_inputs.pkl")), None)
            if member is None:
                return None
            traced = _ShapeUnpickler(archive.open(member)).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError):
        return None
    inputs = traced.get("forward") if isinstance(traced, dict) else None
    if not inputs or not isinstance(inputs[0], tuple):
        return None
    return tuple(int(dim) for dim in inputs[0][1:])


def _program_input(program: torch.export.ExportedProgram, source_name: str) -> Any:
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        shown = ", ".join(f"'{name}'" for name in names) or "none"
        raise TestprioError(
            f"model {source_name} has {len(names)} inputs ({shown}) but testprio feeds one "
            "tensor; export the model with a single input."
        )
    return next(node for node in program.graph.nodes if node.name == names[0])


def _program_input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    example = program.example_inputs
    if example and example[0] and isinstance(example[0][0], torch.Tensor):
        return tuple(int(dim) for dim in example[0][0].shape[1:])
    return None


def _recorded_input_shape(source: str, fmt: str, loaded: Any) -> tuple[int, ...] | None:
    if fmt == "torchscript":
        return _traced_input_shape(source)
    return _program_input_shape(loaded)


def _example_input(
    source: str, fmt: str, loaded: Any, input_shape, pool_shape
) -> tuple[torch.Tensor, str]:
    recorded = _recorded_input_shape(source, fmt, loaded)
    for shape, origin in (
        (input_shape, "--input-shape"),
        (recorded, "model"),
        (pool_shape, "pool"),
    ):
        if shape:
            generator = torch.Generator().manual_seed(0)
            return torch.rand((EXAMPLE_BATCH, *shape), generator=generator), origin
    raise TestprioError(
        "PyTorch needs an example input to convert the model; pass its per-sample shape "
        "with --input-shape, e.g. 1,28,28."
    )


# --- export ------------------------------------------------------------------------------


def _flatten(outputs: Any) -> tuple[list[str] | None, list[torch.Tensor]]:
    """Output names (dict keys, else None) and tensors, in the order exporters flatten them."""
    if isinstance(outputs, torch.Tensor):
        return None, [outputs]
    if isinstance(outputs, dict):
        return [str(key) for key in outputs], list(outputs.values())
    return None, list(outputs)


def _output_names(outputs: Any) -> list[str]:
    names, tensors = _flatten(outputs)
    if names:
        return names
    return ["output"] if len(tensors) == 1 else [f"output_{i}" for i in range(len(tensors))]


def _unsupported(exc: Exception, source_name: str) -> TestprioError | None:
    match = _OPERATOR.search(str(exc))
    unsupported = "not supported" in str(exc) or "No ONNX function" in str(exc)
    if match is None or not unsupported:
        return None
    operator = next(group for group in match.groups() if group)
    return TestprioError(
        f"model {source_name} uses the PyTorch operator '{operator}', which torch.onnx cannot "
        f"convert to ONNX opset {OPSET}; replace that operation in the model, or export the "
        "model to ONNX yourself and pass the .onnx file."
    )


def _export_torchscript(module, example: torch.Tensor, target: str) -> None:
    with torch.no_grad():
        names = _output_names(module(example))
    torch.onnx.export(
        module,
        (example,),
        target,
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_axes={name: {0: "N"} for name in [INPUT_NAME, *names]},
    )


def _batch_size(program: torch.export.ExportedProgram, source_name: str) -> int | None:
    """The fixed batch size an exported program was saved with, or None when dynamic."""
    value = _program_input(program, source_name).meta.get("val")
    dim = value.shape[0] if value is not None and len(value.shape) else None
    return int(dim) if isinstance(dim, int) else None


def _with_dynamic_batch(program, example: torch.Tensor, source_name: str):
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(
            program.module(check_guards=False), (example,), dynamic_shapes=({0: batch},)
        )
    except Exception as exc:  # torch.export's constraint and tracing errors
        raise TestprioError(
            f"model {source_name} was exported with a fixed batch size and cannot be "
            f"exported again with a dynamic one ({describe(exc)}); save it with "
            f"{SAVE_LINES['exported_program']}."
        ) from None


def _export_program(program, example: torch.Tensor, target: str, source_name: str) -> bool:
    """Export to ONNX; returns True when the batch axis had to be made dynamic first."""
    fixed = _batch_size(program, source_name) is not None
    if fixed:
        program = _with_dynamic_batch(program, example, source_name)
    with torch.no_grad():
        names = _output_names(program.module()(example))
    torch.onnx.export(
        program,
        f=target,
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=names,
        external_data=False,
        verbose=False,
    )
    return fixed


def convert(
    source: str,
    target: str,
    input_shape: tuple[int, ...] | None,
    *,
    fmt: str,
    pool_shape: tuple[int, ...] | None = None,
    source_name: str = "",
) -> dict:
    """Write ``target`` from a TorchScript file or an exported program; return the facts."""
    source_name = source_name or source
    loaded = _load(source, fmt, source_name)
    example, origin = _example_input(source, fmt, loaded, input_shape, pool_shape)
    made_dynamic = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation and tracer warnings
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            if fmt == "torchscript":
                _export_torchscript(loaded, example, target)
            else:
                made_dynamic = _export_program(loaded, example, target, source_name)
        except TestprioError:
            raise
        except Exception as exc:  # torch.onnx's exporter errors
            unsupported = _unsupported(exc, source_name)
            if unsupported is not None:
                raise unsupported from None
            raise TestprioError(
                f"torch.onnx could not export model {source_name} ({describe(exc)}); check "
                f"that it runs on inputs of shape {tuple(example.shape)}, or export it to "
                "ONNX yourself and pass the .onnx file."
            ) from None
    exporter = "TorchScript exporter" if fmt == "torchscript" else "dynamo exporter"
    return {
        "converter": f"torch.onnx ({exporter})",
        "converter_version": torch.__version__,
        "framework": "pytorch",
        "framework_version": torch.__version__,
        "opset": OPSET,
        "example_input_shape": list(example.shape),
        "example_input_from": origin,
        "batch_made_dynamic": made_dynamic,
    }


def _run_in_batches(module, x: torch.Tensor, batch: int | None) -> list[np.ndarray]:
    """Run ``x`` in chunks of the model's fixed batch size (padding the last), or at once."""
    if batch is None:
        return [t.numpy() for t in _flatten(module(x))[1]]
    padded = torch.cat([x, x.new_zeros((-len(x) % batch, *x.shape[1:]))])
    chunks = [_flatten(module(padded[i : i + batch]))[1] for i in range(0, len(padded), batch)]
    return [torch.cat(parts)[: len(x)].numpy() for parts in zip(*chunks, strict=True)]


def run_source(source: str, x: np.ndarray, *, fmt: str, source_name: str = "") -> list:
    """The PyTorch model's own outputs for ``x``, in the ONNX model's output order."""
    loaded = _load(source, fmt, source_name or source)
    with torch.no_grad():
        if fmt == "torchscript":
            return _run_in_batches(loaded, torch.from_numpy(x), None)
        batch = _batch_size(loaded, source_name)
        return _run_in_batches(loaded.module(), torch.from_numpy(x), batch)
