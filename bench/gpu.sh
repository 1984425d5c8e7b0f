#!/usr/bin/env bash
# GPU scoring benchmark: testprio's score stage on CUDA (CUDAExecutionProvider, IO binding)
# against raw ONNX Runtime loops over the same samples, at a few batch sizes. Prints a
# Markdown table (and writes it as gpu-results-DEVICE.md in the git-ignored bench scratch
# folder). About 1-3 minutes on a GPU node; under 5 minutes in all.
#
#   bash bench/gpu.sh                 # on a GPU machine: the CUDA path
#   bash bench/gpu.sh --cpu           # anywhere: the same measurements on the CPU, small
#   bash bench/gpu.sh --make-venv     # first create a venv with onnxruntime-gpu (scratch folder)
#
# Options: --samples N (default 200000 on CUDA, 20000 with --cpu), --batches "256 1024 4096",
# --repeats R (best of R, default 3), --python PATH (default .venv/bin/python, else python3).
#
# Rows of the table:
#   raw session.run  session.run on numpy batches sliced from a memory-mapped .npy (the
#                    copies to and from the GPU happen inside run)
#   raw IO binding   the input copied to a device buffer reused across batches, run with
#                    IO binding, output copied back: what testprio.model.BoundRunner does
#   score_shard      the whole stage on a Parquet shard of the same samples: read, copy,
#                    run, softmax + metrics, scores written (device="cuda", gpu_batch_size=B)
# "stage / raw" divides the stage's rows/s by the faster raw loop's.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=cuda
SAMPLES=""
BATCHES=""
REPEATS=3
PYTHON=""
MAKE_VENV=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --samples) SAMPLES="$2"; shift ;;
    --batches) BATCHES="$2"; shift ;;
    --repeats) REPEATS="$2"; shift ;;
    --python) PYTHON="$2"; shift ;;
    --make-venv) MAKE_VENV=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown option '$1'; see 'bash bench/gpu.sh --help'." >&2; exit 2 ;;
  esac
  shift
done

SCRATCH=bench/work  # git-ignored
WORK=$SCRATCH/gpu
mkdir -p "$WORK"
if [ "$MAKE_VENV" = 1 ]; then
  VENV=$SCRATCH/gpu-venv
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -e .
    # onnxruntime and onnxruntime-gpu install the same module: keep only the GPU build.
    "$VENV/bin/pip" uninstall -q -y onnxruntime
    "$VENV/bin/pip" install -q onnxruntime-gpu
  fi
  PYTHON="$VENV/bin/python"
fi
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ "$MODE" = cuda ]; then
  SAMPLES="${SAMPLES:-200000}"
  BATCHES="${BATCHES:-256 1024 4096}"
else
  SAMPLES="${SAMPLES:-20000}"
  BATCHES="${BATCHES:-256 1024}"
fi

exec timeout 290 "$PYTHON" - "$MODE" "$SAMPLES" "$REPEATS" "$WORK" $BATCHES <<'PY'
import contextlib
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from testprio import storage
from testprio.convert import convert
from testprio.ingest import ingest
from testprio.layout import RunLayout
from testprio.model import CUDA_PROVIDER, create_session, session_device
from testprio.score import score_shard, scores_uri_for

mode, samples, repeats, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
batches = [int(b) for b in sys.argv[5:]]
SHAPE, CLASSES, SEED = (1, 28, 28), 10, 20240611
logging.getLogger("testprio").setLevel(logging.WARNING)


def say(message):
    print(f"[gpu.sh {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if mode == "cuda" and CUDA_PROVIDER not in ort.get_available_providers():
    sys.exit(
        f"gpu.sh: this onnxruntime ({ort.__version__}, {sys.executable}) has no CUDA execution "
        "provider; rerun with --make-venv (installs onnxruntime-gpu) or --python PATH, or use "
        "--cpu."
    )


def cnn(path: Path) -> None:
    """bench.py's CNN (Conv16-ReLU-Pool-Conv32-ReLU-Pool-Linear), built without torch."""
    rng = np.random.default_rng(SEED)
    weights = {
        "w1": rng.normal(0, 0.3, (16, 1, 3, 3)),
        "b1": np.zeros(16),
        "w2": rng.normal(0, 0.1, (32, 16, 3, 3)),
        "b2": np.zeros(32),
        "w3": rng.normal(0, 0.05, (32 * 5 * 5, CLASSES)),
        "b3": np.zeros(CLASSES),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def raw_run(x, session, batch):
    started = time.perf_counter()
    for start in range(0, len(x), batch):
        session.run(["logits"], {"input": np.ascontiguousarray(x[start : start + batch])})
    return time.perf_counter() - started


def raw_io_binding(x, session, batch, device):
    binding = session.io_binding()
    started = time.perf_counter()
    buffer = None
    for start in range(0, len(x), batch):
        feed = np.ascontiguousarray(x[start : start + batch])
        if buffer is not None and tuple(buffer.shape()) == feed.shape:
            buffer.update_inplace(feed)
        else:
            # A CPU OrtValue wraps the array it is made from, and update_inplace writes into
            # it: give it its own copy, never the read-only memory-mapped pool.
            buffer = ort.OrtValue.ortvalue_from_numpy(np.array(feed), device, 0)
            binding.bind_ortvalue_input("input", buffer)
        binding.bind_output("logits", device, 0)
        session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()
    return time.perf_counter() - started


shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
model_path, npy = work / "cnn.onnx", work / "pool.npy"
cnn(model_path)
say(f"writing {samples:,} samples, ingesting them into one shard")
rng = np.random.default_rng(SEED + 1)
np.save(npy, rng.random((samples, *SHAPE), dtype=np.float32))
layout = RunLayout.create(str(work / "runs"), "gpu")
(shard,) = ingest(layout, str(npy), shard_size=samples)
convert(layout, str(model_path))
session = create_session(layout.model_onnx, device=mode)
device = session_device(session)
if device != mode:
    sys.exit(f"gpu.sh: the session runs on {device}, not {mode}; see the warning above.")
x = np.load(npy, mmap_mode="r")
target = scores_uri_for(layout, shard)
for batch in batches[:1]:  # warm-up: CUDA kernels and cuDNN algorithm search
    raw_run(x[: 4 * batch], session, batch)
    raw_io_binding(x[: 4 * batch], session, batch, device)

rows = []
for batch in batches:
    times = {"raw session.run": [], "raw IO binding": [], "score_shard": []}
    for _ in range(repeats):
        times["raw session.run"].append(raw_run(x, session, batch))
        times["raw IO binding"].append(raw_io_binding(x, session, batch, device))
        storage.delete(target)
        started = time.perf_counter()
        result = score_shard(layout, shard, batch_size=batch, gpu_batch_size=batch, device=mode)
        times["score_shard"].append(time.perf_counter() - started)
        assert result["rows"] == samples and result["device"] == device, result
    rates = {name: samples / min(values) for name, values in times.items()}
    raw = max(rates["raw session.run"], rates["raw IO binding"])
    rows.append((batch, rates, rates["score_shard"] / raw, times))
    say(f"B={batch}: " + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in rates.items()))

gpu = "cpu only"
if device == "cuda":
    with contextlib.suppress(Exception):
        import subprocess

        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        ).stdout.strip()
lines = [
    f"## Scoring on {device} ({'bash bench/gpu.sh' + (' --cpu' if mode == 'cpu' else '')})",
    "",
    f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; GPU: {gpu}; nproc "
    f"{os.cpu_count()}; onnxruntime {ort.__version__} ({', '.join(session.get_providers())}); "
    f"Python {platform.python_version()}",
    f"- {samples:,} random float32 1x28x28 samples, bench.py's CNN; best of {repeats} "
    "interleaved runs; score_shard includes reading the Parquet shard and writing scores.",
    "",
    "| B | raw session.run | raw IO binding | score_shard | stage / raw |",
    "|---|---|---|---|---|",
]
for batch, rates, ratio, _ in rows:
    lines.append(
        f"| {batch} | {rates['raw session.run']:,.0f} rows/s | {rates['raw IO binding']:,.0f} "
        f"rows/s | {rates['score_shard']:,.0f} rows/s | {ratio:.2f} |"
    )
lines += ["", "| B | run | seconds per run |", "|---|---|---|"]
for batch, _, _, times in rows:
    for name, values in times.items():
        lines.append(f"| {batch} | {name} | {', '.join(f'{v:.2f}' for v in values)} |")
text = "\n".join(lines) + "\n"
print(text)
(work.parent / f"gpu-results-{device}.md").write_text(text)
del x
shutil.rmtree(work, ignore_errors=True)
PY
