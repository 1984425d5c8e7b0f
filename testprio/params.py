"""Every run parameter of ``testprio run`` and of the ``prioritize`` pipeline, once.

``PARAMETERS`` is the table; the command line (``testprio.cli``: its ``run`` options and
``RUN_DEFAULTS``), the stage plumbing (``testprio.stages``: ``INGEST_PARAMETERS``,
``FLOAT_PARAMETERS`` and the range checks of ``validate_parameters``), the ``Args:``
descriptions of the pipeline and its components (``describe``) and the option table of
docs/reference/cli.md (``markdown_table``) are built from it. The signatures of the pipeline
function and of the components cannot be generated (KFP ships a lightweight component's source
code to its container), so tests/test_params.py asserts that they equal this table.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from testprio.activations import SPATIAL_REDUCTIONS
from testprio.convert import DEFAULT_PARITY_TOLERANCE, OUTPUT_KINDS
from testprio.ingest.options import IngestOptions
from testprio.ingest.preprocess import PRESETS
from testprio.metamorphic import MAX_FOLLOWUPS
from testprio.prioritizers import NAMES as PRIORITIZER_NAMES
from testprio.rank import DEFAULT_MEMORY_MB as RANK_MEMORY_MB


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a parameter that has none

# The pipeline's tasks (pipelines/prioritize.py); a parameter lists those it is passed to.
STAGES = ("start", "ingest", "convert", "reference", "score", "rank", "report")
FRAMEWORK_CHOICES = ("auto", "onnx", "pytorch", "tensorflow", "paddle")
# KFP's name of each Python parameter type (what the component spec says).
KFP_TYPES = {str: "String", int: "Integer", float: "Float", bool: "Boolean"}


def finite_float(text: str) -> float:
    """The argparse type of every float option: a number, neither inf nor nan."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number; give one like 2.5")
    return value


@dataclass(frozen=True)
class Parameter:
    """One run parameter: its name (Python, KFP and ``--flag-form``), type, default and help.

    ``stages``: the tasks that take it. ``choices``: its allowed values, for the help and the
    docs (the stages check them, with their own sentences); ``argparse_choices`` also makes
    the command line refuse others. ``minimum``/``maximum``: the smallest and largest whole
    number allowed (a maximum where a count multiplies memory).
    ``cli``: whether ``testprio run`` has the option (the others are for cluster runs).
    ``bare``: the value the option takes when given without one (``--metamorphic``).
    """

    name: str
    type: type
    default: Any
    help: str
    stages: tuple[str, ...]
    choices: tuple[str, ...] = ()
    argparse_choices: bool = False
    minimum: int | None = None
    maximum: int | None = None
    cli: bool = True
    metavar: str | None = None
    bare: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


_INGEST = IngestOptions()  # the ingest stage's own defaults
# The reference pool (--train-data) is ingested with the pool's own options.
_START_INGEST = ("start", "ingest", "reference")
_START_CONVERT = ("start", "convert")

PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "model",
        str,
        REQUIRED,
        "the classifier, a file or folder: ONNX, PyTorch, TensorFlow/Keras or PaddlePaddle "
        "(local path or gs://)",
        _START_CONVERT,
        metavar="M",
    ),
    Parameter(
        "data",
        str,
        REQUIRED,
        "the pool: .npy, .npz, .parquet, .csv, an image folder, or a .zip/.tar/.tar.gz of "
        "one; a local path, gs://... or http(s)://...",
        ("start", "ingest"),
        metavar="D",
    ),
    Parameter(
        "root",
        str,
        REQUIRED,
        "where runs go: a local folder or gs://bucket/prefix",
        ("start",),
        metavar="R",
    ),
    Parameter(
        "run_id",
        str,
        "",
        "name of the run folder {root}/{run_id} (default: a timestamp; in a cluster run the "
        "KFP job name)",
        ("start",),
        metavar="ID",
    ),
    Parameter(
        "metric",
        str,
        "gini",
        "the prioritizer the ranking is sorted by, most worth labelling first (coverage and "
        "surprise ones need --train-data, instability needs --metamorphic; kmnc = kmnc-cam)",
        ("start", "rank"),
        choices=tuple(PRIORITIZER_NAMES),
    ),
    Parameter(
        "framework",
        str,
        "auto",
        "the model's framework; auto detects it from the file",
        _START_CONVERT,
        choices=FRAMEWORK_CHOICES,
    ),
    Parameter(
        "output_kind",
        str,
        "auto",
        "whether the class output is logits or probabilities; auto detects it on pool "
        "samples (probabilities are never softmaxed twice)",
        _START_CONVERT,
        choices=OUTPUT_KINDS,
    ),
    Parameter(
        "output_name",
        str,
        "",
        "the model output holding the class scores, when the model has several candidates",
        _START_CONVERT,
        metavar="NAME",
    ),
    Parameter(
        "input_shape",
        str,
        "",
        "per-sample shape of an array pool that stores samples flat, e.g. 1,28,28 (applied "
        "before the ops)",
        ("start", "ingest", "convert", "reference"),
        metavar="C,H,W",
    ),
    Parameter(
        "shard_size",
        int,
        _INGEST.shard_size,
        "samples per shard; each shard is one score task",
        _START_INGEST,
        minimum=1,
        metavar="N",
    ),
    Parameter(
        "batch_size",
        int,
        256,
        "samples per ONNX Runtime call",
        ("start", "score"),
        minimum=1,
        metavar="N",
    ),
    Parameter(
        "gpu_batch_size",
        int,
        1024,
        "samples per ONNX Runtime call on a GPU (0: batch_size); cluster runs only",
        ("score",),
        minimum=0,
        cli=False,
        metavar="N",
    ),
    Parameter(
        "top_k",
        int,
        10,
        "rows printed and kept in summary.json and the report",
        ("start", "rank", "report"),
        minimum=0,
        metavar="K",
    ),
    Parameter(
        "rank_memory_mb",
        int,
        RANK_MEMORY_MB,
        "memory of the rank task in MiB, whatever the pool's size: a ranking by a score "
        "column sorts out of core within it, spilling to the task's local temp directory "
        "(about 80 bytes a sample); CAM orders (kmnc-cam, ...) still hold the pool's covered "
        "cells in memory (at least 256)",
        ("start", "rank"),
        metavar="MB",
    ),
    Parameter(
        "parity_tolerance",
        float,
        DEFAULT_PARITY_TOLERANCE,
        "largest difference of any class probability allowed between the converted ONNX "
        "model and its source framework",
        _START_CONVERT,
        metavar="T",
    ),
    Parameter(
        "strict_model_checks",
        bool,
        False,
        "fail the run when a model check fails (default: warn)",
        _START_CONVERT,
    ),
    Parameter(
        "preset",
        str,
        _INGEST.preset,
        "the preprocessing preset the model was trained with",
        _START_INGEST,
        choices=tuple(sorted(PRESETS)),
        metavar="NAME",
    ),
    Parameter(
        "ops",
        str,
        _INGEST.ops,
        'preprocessing ops as a JSON list, e.g. [{"op": "scale", "divide": 255}] (run '
        "before the preset's)",
        _START_INGEST,
        metavar="JSON",
    ),
    Parameter(
        "custom_ops",
        str,
        _INGEST.custom_ops,
        "a Python file defining op(x) -> x, checked and run in a sandboxed process after the "
        'other ops (or where {"op": "custom"} stands in ops)',
        _START_INGEST,
        metavar="FILE.py",
    ),
    Parameter(
        "on_bad_sample",
        str,
        _INGEST.on_bad_sample,
        "quarantine: unusable samples go to data/quarantine.parquet with a reason; fail: "
        "the first one stops the run",
        _START_INGEST,
        choices=("quarantine", "fail"),
        argparse_choices=True,
    ),
    Parameter(
        "value_range",
        str,
        "",
        "declared range of raw values, e.g. 0,255: samples outside it are quarantined",
        _START_INGEST,
        metavar="MIN,MAX",
    ),
    Parameter(
        "tensor_column",
        str,
        _INGEST.tensor_column,
        "Parquet column or .npz array of the samples",
        _START_INGEST,
        metavar="NAME",
    ),
    Parameter(
        "label_column",
        str,
        _INGEST.label_column,
        "Parquet/CSV column or .npz array of the labels (empty: label, labels or y if "
        "present; two of them is an error)",
        _START_INGEST,
        metavar="NAME",
    ),
    Parameter(
        "max_data_gb",
        float,
        _INGEST.max_data_gb,
        "largest download, and largest archive once extracted, in GiB",
        _START_INGEST,
        metavar="G",
    ),
    Parameter(
        "max_image_pixels",
        int,
        _INGEST.max_image_pixels,
        "largest image decoded from an image pool, in pixels (width x height); larger ones "
        "are quarantined (decompression bombs)",
        _START_INGEST,
        minimum=1,
        metavar="P",
    ),
    Parameter(
        "custom_op_cpu_seconds",
        float,
        _INGEST.custom_op_cpu_seconds,
        "CPU seconds the custom op's worker may use per batch",
        _START_INGEST,
        metavar="S",
    ),
    Parameter(
        "custom_op_memory_mb",
        int,
        _INGEST.custom_op_memory_mb,
        "memory of the custom op's worker, in MB",
        _START_INGEST,
        metavar="M",
    ),
    Parameter(
        "custom_op_batch_timeout_s",
        float,
        _INGEST.custom_op_batch_timeout_s,
        "wall-clock seconds the custom op may take per batch",
        _START_INGEST,
        metavar="S",
    ),
    Parameter(
        "allow_private_urls",
        bool,
        _INGEST.allow_private_urls,
        "let an http(s) pool come from loopback, private or link-local addresses (refused "
        "by default: they reach internal services)",
        _START_INGEST,
    ),
    Parameter(
        "download_timeout_s",
        float,
        _INGEST.download_timeout_s,
        "time limit of a whole http(s) download, in seconds",
        _START_INGEST,
        metavar="S",
    ),
    Parameter(
        "download_min_bytes_per_s",
        float,
        _INGEST.download_min_bytes_per_s,
        "slowest average rate of an http(s) download over a minute; 0: no minimum",
        _START_INGEST,
        metavar="B",
    ),
    Parameter(
        "train_data",
        str,
        "",
        "a reference pool, normally the training data (labels not needed), read and "
        "preprocessed like --data: adds the coverage (nac, kmnc, nbc, snac, tknc) and "
        "surprise (lsa, dsa, mdsa) prioritizers",
        ("start", "reference"),
        metavar="R",
    ),
    Parameter(
        "layers",
        str,
        "",
        "comma-separated ONNX tensor names of the hidden layers coverage reads (surprise "
        "reads the last); empty: the model's last hidden activations (with --train-data)",
        ("start", "reference"),
        metavar="NAMES",
    ),
    Parameter(
        "surprise_reduce",
        str,
        "mean",
        "how the surprise layer, when it is a feature map (N, C, H, W), becomes one vector per "
        "sample for lsa, dsa and mdsa: mean (over space, one unit per channel, as SADL) or "
        "flatten (every channel and position: finer, C x H x W units to store and compare)",
        ("start", "reference"),
        choices=tuple(SPATIAL_REDUCTIONS),
        argparse_choices=True,
    ),
    Parameter(
        "metamorphic",
        str,
        "",
        "adds the instability prioritizer: default (the transforms suited to the samples; "
        "also the flag alone) or a comma list of rotate, translate, scale, brightness, "
        "contrast, blur, noise",
        ("start", "score"),
        metavar="TRANSFORMS",
        bare="default",
    ),
    Parameter(
        "followups",
        int,
        10,
        "metamorphic follow-ups per sample (with --metamorphic)",
        ("start", "score"),
        minimum=1,
        maximum=MAX_FOLLOWUPS,
        metavar="N",
    ),
)

BY_NAME: dict[str, Parameter] = {parameter.name: parameter for parameter in PARAMETERS}


def of_stage(stage: str) -> tuple[Parameter, ...]:
    """The parameters the ``stage`` task takes, in table order."""
    return tuple(parameter for parameter in PARAMETERS if stage in parameter.stages)


def cli_defaults() -> dict[str, Any]:
    """``testprio run``'s optional parameters and their defaults."""
    return {p.name: p.default for p in PARAMETERS if p.cli and not p.required}


def names_of_type(kind: type) -> tuple[str, ...]:
    return tuple(parameter.name for parameter in PARAMETERS if parameter.type is kind)


def describe(**own: str) -> Callable:
    """Decorator: end the function's docstring with a Google-style ``Args:`` section.

    ``own`` describes the function's inputs that are not run parameters; run parameters get
    their ``help`` from the table. KFP reads the section into the ``description`` of each
    input of the compiled component or pipeline (the Kubeflow UI shows it). An input
    described neither way fails at import, so a new input cannot go undocumented.
    """

    def decorate(function: Callable) -> Callable:
        import inspect

        lines = []
        for name in inspect.signature(function).parameters:
            if name in own:
                text = own[name]
            elif name in BY_NAME:
                text = BY_NAME[name].help
            else:
                raise TypeError(f"{function.__name__}: input '{name}' has no description.")
            lines.append(f"    {name}: {text}")
        unused = sorted(set(own) - set(inspect.signature(function).parameters))
        if unused:
            raise TypeError(f"{function.__name__}: '{unused[0]}' is not one of its inputs.")
        summary = inspect.cleandoc(function.__doc__ or "").rstrip()
        function.__doc__ = f"{summary}\n\nArgs:\n" + "\n".join(lines) + "\n"
        return function

    return decorate


def _default_text(parameter: Parameter) -> str:
    if parameter.required:
        return "required"
    if parameter.default == "":
        return "(empty)"
    if parameter.type is bool:
        return "on" if parameter.default else "off"
    if parameter.type is float and float(parameter.default).is_integer():
        return f"`{int(parameter.default)}`"
    return f"`{parameter.default}`"


def markdown_table() -> str:
    """The Markdown table of every parameter (docs/reference/cli.md, between the params markers)."""
    rows = [
        "| option | pipeline parameter | type | default | meaning | tasks |",
        "|---|---|---|---|---|---|",
    ]
    for p in PARAMETERS:
        option = f"`{p.flag}`" if p.cli else "(cluster only)"
        meaning = p.help.replace("|", "\\|")
        if p.choices:
            meaning += "; one of " + ", ".join(f"`{choice}`" for choice in p.choices)
        rows.append(
            f"| {option} | `{p.name}` | {p.type.__name__} | {_default_text(p)} | {meaning} "
            f"| {', '.join(p.stages)} |"
        )
    return "\n".join(rows) + "\n"


DOCS_START, DOCS_END = "<!-- params:start -->", "<!-- params:end -->"


def update_docs(path: str) -> None:
    """Rewrite the table between ``DOCS_START`` and ``DOCS_END`` in the Markdown ``path``."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    before, start, rest = text.partition(DOCS_START + "\n")
    _, end, after = rest.partition(DOCS_END)
    if not start or not end:
        raise ValueError(f"{path} lacks the {DOCS_START} / {DOCS_END} markers.")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(before + start + markdown_table() + end + after)


if __name__ == "__main__":  # python -m testprio.params docs/reference/cli.md
    import sys

    update_docs(sys.argv[1] if len(sys.argv) > 1 else "docs/reference/cli.md")
