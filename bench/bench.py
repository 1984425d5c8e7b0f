"""Benchmarks of testprio's heavy paths: scoring throughput, peak memory, ranking time.

Run ``python bench/bench.py`` (full sizes, about 10 minutes on 2 cores) or
``python bench/bench.py --quick`` (tiny sizes, under a minute, to check the script works).
It prints a Markdown report and writes it to ``bench/RESULTS.md``.

(a) scoring throughput: ``testprio.score.score_shard`` (reads the Parquet shard, runs ONNX
    Runtime, computes every metric, writes the scores file) against a raw loop of the same
    batches read from the ``.npy`` with mmap and fed to the same ``InferenceSession``.
(b) peak RSS of ingest + convert + score + rank at two pool sizes, each in a fresh child
    process (peak = the child's ``VmHWM``; phases sampled from ``/proc/self/status``).
(c) time (and peak RSS) to rank 10M scores spread over 100 scores shards;
    ``--only c --rank-samples N`` ranks N scores in shards of 100,000 instead, once, and
    prints as its last line ``rank N samples: S s, peak RSS M MiB``. Its shards hold the
    per-sample probabilities (which rank never reads but for one row's length) in their
    first row group only, so that 100M scores fit a small disk.

Scratch files go to ``bench/work/`` (git-ignored) and are deleted at the end unless
``--keep`` is given. ``--child ...`` is internal: the script re-runs itself for (b), (c) and
the model export, so that each measurement starts from a fresh interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_WORK = BENCH_DIR / "work"
DEFAULT_RESULTS = BENCH_DIR / "RESULTS.md"

SAMPLE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
OPSET_VERSION = 18
EXPORT_EXAMPLE_BATCH = 4
SEED = 20240611
GIB = 1024**3
MIB = 1024**2

TARGET_SCORE_RATIO = 0.90
TARGET_RSS_GROWTH = 1.25
TARGET_RSS_ABS = 1.5 * 1e9  # "1.5 GB"
TARGET_RANK_SECONDS = 10.0


@dataclass(frozen=True)
class Sizes:
    score_pool: int
    score_batches: tuple[int, ...]
    mem_sizes: tuple[int, int]
    mem_shard: int
    rank_shards: int
    rank_rows: int
    repeats: int = 2
    score_repeats: int = 3


FULL = Sizes(
    score_pool=200_000,
    score_batches=(256, 1024),
    mem_sizes=(100_000, 1_000_000),
    mem_shard=100_000,
    rank_shards=100,
    rank_rows=100_000,
    repeats=3,
    score_repeats=5,
)
QUICK = Sizes(
    score_pool=20_000,
    score_batches=(256, 1024),
    mem_sizes=(2_000, 20_000),
    mem_shard=2_000,
    rank_shards=10,
    rank_rows=100_000,
)

# Batch size the score stage writes its row groups with (its default --batch-size), used
# when synthesising scores files for (c) so they look like the ones the pipeline makes.
SCORE_STAGE_BATCH = 256
# Rows per scores shard of --rank-samples (1,000 shards for 100M).
RANK_SHARD_ROWS = 100_000


# --- small helpers ---------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_bytes(value: float) -> str:
    if value >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / MIB:.0f} MiB"


def fmt_s(value: float) -> str:
    return f"{value:.2f} s"


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def proc_status_kb() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile``, ``RssShmem`` of this process, in kB."""
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"}
    values: dict[str, int] = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in wanted:
                values[key] = int(rest.split()[0])
    return values


class RssSampler:
    """Polls ``/proc/self/status`` in a thread; keeps the peak of each field per phase."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _record(self) -> None:
        values = proc_status_kb()
        peak = self.peaks.setdefault(self.phase, {})
        for key in ("VmRSS", "RssAnon", "RssFile"):
            peak[key] = max(peak.get(key, 0), values.get(key, 0))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def start(self) -> RssSampler:
        self._record()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        self._record()
        self.phase = phase
        started = time.perf_counter()
        try:
            yield
        finally:
            self._record()
            self.seconds[phase] = time.perf_counter() - started
            self.phase = f"after {phase}"


def run_child(args: list[str]) -> tuple[dict, int, float]:
    """Run ``bench.py --child ARGS``; return (its JSON result, its peak RSS in bytes, wall s).

    The peak is the child's own ``VmHWM`` read just before it exits. ``ru_maxrss`` of the
    child (``wait4`` / ``RUSAGE_CHILDREN``) is not used: Linux folds the parent's peak into
    it, because ``subprocess`` starts children with vfork and ``exec`` records the vforked
    (parent's) address space's high-water mark in the child's ``maxrss``.
    """
    result_path = Path(tempfile.gettempdir()) / f"bench-child-{os.getpid()}-{time.time_ns()}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    command += ["--result", str(result_path)]
    started = time.perf_counter()
    completed = subprocess.run(command, check=False)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed with exit code {completed.returncode}")
    result = json.loads(result_path.read_text())
    result_path.unlink()
    return result, result["vmhwm_kb"] * 1024, wall


def load_average() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def write_pool(path: Path, count: int, seed: int, chunk: int = 50_000) -> None:
    """A seeded random float32 pool of ``count`` samples, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    array = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(count, *SAMPLE_SHAPE)
    )
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        array[start:stop] = rng.random((stop - start, *SAMPLE_SHAPE), dtype=np.float32)
    array.flush()
    del array


def profile_breakdown(
    profile: cProfile.Profile, wanted: list[tuple[str, Callable[[tuple], bool]]]
) -> list[tuple[str, float, int]]:
    """Cumulative seconds and call counts of the functions matched by each predicate."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = []
    for label, match in wanted:
        hits = [(value[3], value[1]) for key, value in stats.items() if match(key)]
        seconds = max((hit[0] for hit in hits), default=0.0)
        calls = max((hit[1] for hit in hits), default=0)
        rows.append((label, seconds, calls))
    # The first row is the total; rows without indent are its parts; the rest is Cython
    # calls (to_numpy, to_pylist, ...) and glue that cProfile cannot see by name.
    attributed = sum(seconds for label, seconds, _ in rows[1:] if not label.startswith(" "))
    rows.append(("other (Cython calls, glue)", max(0.0, rows[0][1] - attributed), 0))
    return rows


def by_name(name: str, file_part: str = "") -> Callable[[tuple], bool]:
    """Match a pstats key whose function name contains ``name`` and file ``file_part``."""

    def match(key: tuple) -> bool:
        file, _, function = key
        return name in function and file_part in file

    return match


def in_file(file_suffix: str, function: str) -> Callable[[tuple], bool]:
    """Match a pstats key by exact function name in a file ending with ``file_suffix``."""
    return lambda key: key[0].endswith(file_suffix) and key[2] == function


# --- model export (child process: keeps torch out of the measuring process) --------------


def child_export(args: argparse.Namespace) -> dict:
    import logging
    import warnings

    import onnx
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, NUM_CLASSES),
    ).eval()
    example = torch.zeros(EXPORT_EXAMPLE_BATCH, *SAMPLE_SHAPE)
    path = Path(args.model)
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    registration_log.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=OPSET_VERSION,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    sidecar = path.with_name(path.name + ".data")
    if sidecar.exists():  # the exporter ignored external_data=False: inline the weights
        proto = onnx.load(str(path), load_external_data=True)
        onnx.external_data_helper.convert_model_from_external_data(proto)
        onnx.save_model(proto, str(path), save_as_external_data=False)
        sidecar.unlink()
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    parameters = sum(p.numel() for p in model.parameters())
    return {"model": str(path), "parameters": parameters, "bytes": path.stat().st_size}


# --- (a) scoring throughput ------------------------------------------------------------


def raw_loop(npy: Path, session, input_name: str, output_name: str, batch: int) -> float:
    """Seconds to push every sample of ``npy`` through ``session`` in batches of ``batch``."""
    x = np.load(npy, mmap_mode="r")
    started = time.perf_counter()
    for start in range(0, x.shape[0], batch):
        feed = np.ascontiguousarray(x[start : start + batch])
        session.run([output_name], {input_name: feed})
    seconds = time.perf_counter() - started
    del x
    return seconds


def bench_score(work: Path, sizes: Sizes, model_path: Path) -> dict:
    from testprio import storage
    from testprio.convert import convert
    from testprio.ingest import ingest, iter_shard_batches
    from testprio.layout import RunLayout
    from testprio.model import create_session
    from testprio.score import score_shard, scores_uri_for

    load_before = load_average()

    count = sizes.score_pool
    npy = work / "score-pool.npy"
    say(f"(a) writing a pool of {count:,} samples")
    write_pool(npy, count, SEED + 1)
    layout = RunLayout.create(str(work / "runs"), "bench-score")
    started = time.perf_counter()
    (shard,) = ingest(layout, str(npy), shard_size=count)
    ingest_seconds = time.perf_counter() - started
    convert(layout, str(model_path))
    model = storage.read_json(layout.model_json)
    input_name, output_name = model["input"]["name"], model["class_output"]["name"]
    target = scores_uri_for(layout, shard)
    session = create_session(layout.model_onnx)
    providers = session.get_providers()

    # Sanity: the stage's predictions are the raw session's arg-max.
    storage.delete(target)
    score_shard(layout, shard, batch_size=sizes.score_batches[0])
    check_rows = min(count, 1024)
    raw_pred = session.run([output_name], {input_name: np.load(npy, mmap_mode="r")[:check_rows]})
    stage_pred = storage.read_table(target, columns=["predicted"]).column("predicted")
    agree = float(np.mean(raw_pred[0].argmax(axis=1) == stage_pred.to_numpy()[:check_rows]))

    rows = []
    for batch in sizes.score_batches:
        raw_times, stage_times = [], []
        for repeat in range(sizes.score_repeats):
            raw_times.append(raw_loop(npy, session, input_name, output_name, batch))
            storage.delete(target)
            started = time.perf_counter()
            result = score_shard(layout, shard, batch_size=batch)
            stage_times.append(time.perf_counter() - started)
            assert result["rows"] == count and not result["skipped"], result
            say(
                f"(a) B={batch} run {repeat + 1}: raw {count / raw_times[-1]:,.0f} rows/s, "
                f"stage {count / stage_times[-1]:,.0f} rows/s"
            )
        raw_rate, stage_rate = count / min(raw_times), count / min(stage_times)
        rows.append(
            {
                "batch": batch,
                "raw_rows_s": raw_rate,
                "stage_rows_s": stage_rate,
                "ratio": stage_rate / raw_rate,
                "raw_times": raw_times,
                "stage_times": stage_times,
            }
        )

    # Reading the shard alone (what the stage does before any inference), best of N.
    read_times = []
    for _ in range(sizes.score_repeats):
        started = time.perf_counter()
        for _batch, _x in iter_shard_batches(shard, sizes.score_batches[0]):
            pass
        read_times.append(time.perf_counter() - started)

    # Where the stage's time goes (one more run under cProfile, default batch size).
    storage.delete(target)
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.runcall(score_shard, layout, shard, batch_size=sizes.score_batches[0])
    profiled_total = time.perf_counter() - started
    breakdown = profile_breakdown(
        profile,
        [
            ("score_shard (total, under cProfile)", in_file("testprio/score.py", "score_shard")),
            ("session.run (run_class_output)", by_name("run_class_output", "testprio")),
            ("read shard batches (*shard_batches)", by_name("shard_batches", "testprio/ingest")),
            ("softmax (class_probabilities)", by_name("class_probabilities")),
            ("metrics + Arrow batch (_scores_batch)", by_name("_scores_batch")),
            ("  of which score_probabilities", by_name("score_probabilities")),
            ("write scores (ParquetWriter.write_batch)", by_name("write_batch", "parquet")),
            ("check_finite", by_name("check_finite")),
            ("create_session", by_name("create_session")),
        ],
    )
    shard_bytes = os.path.getsize(shard)
    storage.delete(target)
    return {
        "count": count,
        "ingest_seconds": ingest_seconds,
        "shard_bytes": shard_bytes,
        "providers": providers,
        "agreement": agree,
        "shard_format": storage.read_json(layout.data_manifest).get("shard_format", 1),
        "rows": rows,
        "read_rows_s": count / min(read_times),
        "profile": {"total": profiled_total, "rows": breakdown},
        "load": (load_before, load_average()),
    }


# --- (b) peak RSS of the whole sequence ----------------------------------------------------


def child_pipeline(args: argparse.Namespace) -> dict:
    from testprio.convert import convert
    from testprio.ingest import ingest
    from testprio.layout import RunLayout
    from testprio.rank import rank
    from testprio.score import score_shard

    sampler = RssSampler().start()
    layout = RunLayout.create(args.root, args.run_id)
    with sampler.measure("ingest"):
        shards = ingest(layout, args.data, shard_size=args.shard_size)
    with sampler.measure("convert"):
        convert(layout, args.model)
    with sampler.measure("score"):
        scores = [score_shard(layout, shard, batch_size=256)["uri"] for shard in shards]
    with sampler.measure("rank"):
        summary = rank(layout, scores, metric="gini")
    sampler.stop()
    assert summary["counts"]["ranked"] == args.samples, summary["counts"]
    return {
        "shards": len(shards),
        "seconds": sampler.seconds,
        "peaks_kb": sampler.peaks,
        "vmhwm_kb": proc_status_kb()["VmHWM"],
    }


def bench_memory(work: Path, sizes: Sizes, model_path: Path) -> dict:
    load_before = load_average()
    results = []
    for count in sizes.mem_sizes:
        npy = work / f"mem-pool-{count}.npy"
        say(f"(b) writing a pool of {count:,} samples ({fmt_bytes(count * 784 * 4)})")
        write_pool(npy, count, SEED + 2)
        run_id = f"bench-mem-{count}"
        shutil.rmtree(work / "runs" / run_id, ignore_errors=True)
        say(f"(b) ingest + convert + score + rank of {count:,} samples in a child process")
        result, peak, wall = run_child(
            [
                "pipeline",
                "--data",
                str(npy),
                "--model",
                str(model_path),
                "--root",
                str(work / "runs"),
                "--run-id",
                run_id,
                "--shard-size",
                str(sizes.mem_shard),
                "--samples",
                str(count),
            ]
        )
        say(f"(b) {count:,} samples: peak RSS {fmt_bytes(peak)}, {wall:.1f} s")
        results.append({"count": count, "shard_size": sizes.mem_shard, "peak": peak, **result})
        results[-1]["wall"] = wall
        npy.unlink()
        shutil.rmtree(work / "runs" / run_id, ignore_errors=True)
    return {"runs": results, "load": (load_before, load_average())}


# --- (c) ranking 10M scores -------------------------------------------------------------


def make_scores_run(
    work: Path, shards: int, rows: int, run_id: str, *, total: int | None = None, lean=False
) -> str:
    """A run folder holding only what rank reads: ``data/manifest.json`` and scores shards.

    ``total``: the samples in all (the last shard holds the rest; default shards x rows).
    ``lean``: the probabilities only in each shard's first row group (null lists after it).
    """
    import pyarrow as pa

    from testprio import storage
    from testprio.layout import RunLayout, shard_name
    from testprio.metrics import softmax
    from testprio.score import SCORES_SCHEMA, _scores_batch

    shutil.rmtree(work / "runs" / run_id, ignore_errors=True)
    layout = RunLayout.create(str(work / "runs"), run_id)
    rng = np.random.default_rng(SEED + 3)
    total = shards * rows if total is None else total
    counts = [min(rows, total - index * rows) for index in range(shards)]
    for index, count in enumerate(counts):
        ids = np.arange(index * rows, index * rows + count, dtype=np.int64)
        probs = softmax(rng.standard_normal((count, NUM_CLASSES)) * 3.0)
        labels = rng.integers(0, NUM_CLASSES, count, dtype=np.int32)
        unlabeled = rng.random(count) < 0.5
        batch = pa.RecordBatch.from_arrays(
            [pa.array(ids, pa.int64()), pa.array(labels, pa.int32(), mask=unlabeled)],
            names=["sample_id", "label"],
        )
        scores = _scores_batch(batch, probs)
        if lean:
            column = SCORES_SCHEMA.get_field_index("probs")
            kept = min(count, SCORE_STAGE_BATCH)
            lengths = np.where(np.arange(count) < kept, NUM_CLASSES, 0)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            values = pa.array(probs[:kept].astype(np.float32).ravel())
            nulls = pa.array(np.arange(count) >= kept)
            lists = pa.ListArray.from_arrays(offsets, values, mask=nulls)
            scores = scores.set_column(column, SCORES_SCHEMA.field("probs"), lists)
        with storage.parquet_writer(layout.scores_shard(index), SCORES_SCHEMA) as writer:
            # The score stage writes one row group per batch of its --batch-size.
            writer.write_batch(scores, row_group_size=SCORE_STAGE_BATCH)
    manifest = {
        "source": "bench-scores",
        "samples": total,
        "ingested": total,
        "quarantined": 0,
        "sample_shape": list(SAMPLE_SHAPE),
        "has_labels": True,
        "shards": [{"name": shard_name(i), "rows": count} for i, count in enumerate(counts)],
    }
    storage.write_json(layout.data_manifest, manifest)
    return layout.uri


class ScratchSampler:
    """Polls the size of the rank stage's scratch folders (``testprio-rank-*`` in the temp
    directory) in a thread; keeps the largest total seen."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _size(self) -> int:
        total = 0
        for folder in Path(tempfile.gettempdir()).glob("testprio-rank-*"):
            for path in folder.rglob("*"):
                with contextlib.suppress(OSError):
                    total += path.stat().st_size if path.is_file() else 0
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._size())

    def __enter__(self) -> ScratchSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def child_rank(args: argparse.Namespace) -> dict:
    from testprio.layout import RunLayout
    from testprio.rank import rank

    layout = RunLayout(args.run)
    uris = [layout.scores_shard(i) for i in range(args.shards)]
    profile = cProfile.Profile() if args.profile else None
    with ScratchSampler() as scratch:
        started, cpu_started = time.perf_counter(), time.process_time()
        if profile is not None:
            summary = profile.runcall(rank, layout, uris, metric="gini", top_k=10)
        else:
            summary = rank(layout, uris, metric="gini", top_k=10)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    assert summary["counts"]["ranked"] == args.samples, summary["counts"]
    assert len(summary["top"]) == 10
    result: dict = {"seconds": seconds, "cpu_seconds": cpu_seconds, "scratch": scratch.peak}
    if profile is not None:
        result["breakdown"] = profile_breakdown(
            profile,
            [
                ("rank (total, under cProfile)", in_file("testprio/rank.py", "rank")),
                ("_check_complete", by_name("_check_complete")),
                ("read shards, make sort keys (_Pass._sort_batch)", by_name("_sort_batch")),
                ("  the others' scratch file (_write_others)", by_name("_write_others")),
                ("sort, then sorted rows out (_ranking_batches)", by_name("_ranking_batches")),
                ("write ranking.parquet (RankingWriter.write)", by_name("write", "ranking_file")),
                ("summary in pieces (SummaryStream.add)", by_name("add", "summary.py")),
                ("  of which score_bins", by_name("score_bins")),
                ("other prioritizers' APFD and spread (_other_figures)", by_name("_other_figures")),
                ("  of which the spread (_spread, GROUP BY)", by_name("_spread", "rank_bounded")),
                ("_num_classes", by_name("_num_classes")),
            ],
        )
    return result


def bench_rank(work: Path, sizes: Sizes, samples: int | None = None) -> dict:
    """(c); ``samples``: rank that many scores in shards of ``RANK_SHARD_ROWS``, once, with
    no profile run."""
    load_before = load_average()
    lean = samples is not None
    if lean:
        sizes = dataclasses.replace(
            sizes, rank_shards=-(-samples // RANK_SHARD_ROWS), rank_rows=RANK_SHARD_ROWS, repeats=1
        )
    total = samples if lean else sizes.rank_shards * sizes.rank_rows
    say(f"(c) writing {total:,} scores in {sizes.rank_shards} shards of {sizes.rank_rows:,} rows")
    started = time.perf_counter()
    run_uri = make_scores_run(
        work, sizes.rank_shards, sizes.rank_rows, "bench-rank", total=total, lean=lean
    )
    generate_seconds = time.perf_counter() - started
    common = ["rank", "--run", run_uri, "--shards", str(sizes.rank_shards)]
    common += ["--samples", str(total)]
    runs = []
    for repeat in range(sizes.repeats):
        result, peak, wall = run_child(common)
        say(
            f"(c) run {repeat + 1}: rank {result['seconds']:.2f} s, peak RSS {fmt_bytes(peak)}, "
            f"scratch {fmt_bytes(result['scratch'])}"
        )
        runs.append({"peak": peak, "wall": wall, **result})
    profiled = None
    if not lean:
        say("(c) one more run under cProfile for the breakdown")
        profiled, _, _ = run_child([*common, "--profile"])
    ranking_bytes = os.path.getsize(os.path.join(run_uri, "ranking.parquet"))
    scores_bytes = sum(
        os.path.getsize(os.path.join(run_uri, "scores", name))
        for name in os.listdir(os.path.join(run_uri, "scores"))
    )
    shutil.rmtree(run_uri, ignore_errors=True)
    return {
        "total": total,
        "shards": sizes.rank_shards,
        "rows": sizes.rank_rows,
        "lean": lean,
        "generate_seconds": generate_seconds,
        "runs": runs,
        "profile": profiled and {"total": profiled["seconds"], "rows": profiled["breakdown"]},
        "ranking_bytes": ranking_bytes,
        "scores_bytes": scores_bytes,
        "load": (load_before, load_average()),
    }


# --- report --------------------------------------------------------------------------------


def load_note(section: dict) -> str:
    before, after = section["load"]
    return (
        f"Load average (1/5/15 min) {before} before, {after} after: other processes on this "
        "machine share its cores, so wall times can carry their noise."
    )


def machine_header(mode: str, providers: list[str]) -> list[str]:
    import onnxruntime
    import pyarrow

    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return [
        "# testprio benchmarks",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- mode: {mode} (`python bench/bench.py{' --quick' if mode == 'quick' else ''}`)",
        f"- machine: nproc {nproc}, CPU {cpu}, {fmt_bytes(memory)} RAM, {platform.machine()}",
        f"- onnxruntime {onnxruntime.__version__}, execution provider(s): "
        f"{', '.join(providers)}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, pyarrow {pyarrow.__version__}",
    ]


def report(
    mode: str, model: dict, score: dict | None, memory: dict | None, ranking: dict | None
) -> str:
    """The Markdown report of the sections that ran (None: a section left out by --only)."""
    lines = machine_header(mode, score["providers"] if score else ["CPUExecutionProvider"])
    lines += [
        "",
        "| benchmark | measure | value | target | status |",
        "|---|---|---|---|---|",
    ]
    if score is not None:
        for row in score["rows"]:
            b = row["batch"]
            lines.append(
                f"| (a) scoring, {score['count']:,} samples, B={b} | raw ORT loop | "
                f"{fmt_int(row['raw_rows_s'])} rows/s | | |"
            )
            lines.append(
                f"| (a) scoring, {score['count']:,} samples, B={b} | score_shard stage | "
                f"{fmt_int(row['stage_rows_s'])} rows/s | | |"
            )
            lines.append(
                f"| (a) scoring, {score['count']:,} samples, B={b} | stage / raw | "
                f"{row['ratio']:.3f} | >= {TARGET_SCORE_RATIO:.2f} | "
                f"{verdict(row['ratio'] >= TARGET_SCORE_RATIO)} |"
            )
    if memory is not None:
        runs = memory["runs"]
        for run in runs:
            ok = run["peak"] <= TARGET_RSS_ABS
            lines.append(
                f"| (b) ingest+score+rank, {run['count']:,} samples | peak RSS | "
                f"{fmt_bytes(run['peak'])} ({run['peak'] / 1e9:.2f} GB) | <= 1.5 GB | "
                f"{verdict(ok)} |"
            )
            lines.append(
                f"| (b) ingest+score+rank, {run['count']:,} samples | wall time | "
                f"{fmt_s(run['wall'])} | | |"
            )
        growth = runs[1]["peak"] / runs[0]["peak"]
        lines.append(
            f"| (b) peak RSS growth | {runs[1]['count']:,} / {runs[0]['count']:,} | "
            f"{growth:.2f}x | <= {TARGET_RSS_GROWTH:.2f}x | "
            f"{verdict(growth <= TARGET_RSS_GROWTH)} |"
        )
    if ranking is not None:
        best = min(run["seconds"] for run in ranking["runs"])
        peak = max(run["peak"] for run in ranking["runs"])
        label = f"(c) rank {ranking['total']:,} scores / {ranking['shards']} shards"
        lines.append(
            f"| {label} | time (best of {len(ranking['runs'])}) | {fmt_s(best)} | "
            f"<= {TARGET_RANK_SECONDS:.0f} s | {verdict(best <= TARGET_RANK_SECONDS)} |"
        )
        lines.append(f"| {label} | peak RSS | {fmt_bytes(peak)} ({peak / 1e9:.2f} GB) | | |")

    lines += ["", "## Details"]
    if score is not None:
        lines += ["", "### (a) scoring throughput", ""]
        lines.append(
            f"Model: Conv(1,16,3)-ReLU-MaxPool-Conv(16,32,3)-ReLU-MaxPool-Linear(800,10), "
            f"{model['parameters']:,} parameters, {model['bytes']:,} bytes ONNX (opset "
            f"{OPSET_VERSION}, dynamo export). Pool: {score['count']:,} random float32 samples "
            f"1x28x28, ingested into one shard (shard format {score['shard_format']}, "
            f"{fmt_bytes(score['shard_bytes'])}) in "
            f"{fmt_s(score['ingest_seconds'])}. Stage time = the whole `score_shard` call "
            "(model.json, session creation, Parquet read, softmax + metrics, scores write); raw = "
            "`session.run` over `np.ascontiguousarray` batches of the mmap'ed .npy (views, "
            "no copy: the slices are already contiguous; session made "
            "once, outside the timer). Best of "
            f"{len(score['rows'][0]['raw_times'])} interleaved runs; predicted classes of stage "
            f"and raw agree on {score['agreement']:.0%} of the first 1,024 samples. Reading the "
            f"shard alone (`iter_shard_batches`, B={score['rows'][0]['batch']}, no inference): "
            f"{fmt_int(score['read_rows_s'])} rows/s. {load_note(score)}"
        )
        lines += ["", "| B | raw runs (s) | stage runs (s) |", "|---|---|---|"]
        for row in score["rows"]:
            raw = ", ".join(f"{t:.2f}" for t in row["raw_times"])
            stage = ", ".join(f"{t:.2f}" for t in row["stage_times"])
            lines.append(f"| {row['batch']} | {raw} | {stage} |")
        lines += [
            "",
            f"Profile of one `score_shard` call at B={score['rows'][0]['batch']} (cProfile, "
            f"wall {fmt_s(score['profile']['total'])}; cumulative seconds):",
            "",
            "| part | seconds | share | calls |",
            "|---|---|---|---|",
        ]
        total = score["profile"]["rows"][0][1] or 1.0
        for name, seconds, calls in score["profile"]["rows"]:
            lines.append(f"| {name} | {seconds:.2f} | {seconds / total:.0%} | {calls:,} |")

    if memory is not None:
        lines += ["", "### (b) peak RSS by phase", ""]
        lines.append(
            "Each size (a seeded random `.npy` written beforehand by the parent process) runs "
            f"ingest (shard size {runs[0]['shard_size']:,}) + convert + "
            "score (B=256, every shard) + rank (gini) in a fresh child process; `peak RSS` is "
            "that child's `VmHWM` read as it finishes (not `ru_maxrss` from `wait4` / "
            "`RUSAGE_CHILDREN`: with vfork+exec Linux reports the parent's high-water mark there). "
            "Per phase, `/proc/self/status` was sampled every 20 ms: RssAnon is the process's "
            "own memory, RssFile the resident pages of files it has mapped (shared libraries, "
            "plus the pool itself if a reader memory-maps it), which count in RSS although the "
            "kernel could drop them. " + load_note(memory)
        )
        lines += [
            "",
            "| samples | phase | seconds | peak VmRSS | peak RssAnon | peak RssFile |",
            "|---|---|---|---|---|---|",
        ]
        for run in runs:
            for phase in ("ingest", "convert", "score", "rank"):
                peak_kb = run["peaks_kb"].get(phase, {})
                lines.append(
                    f"| {run['count']:,} | {phase} | {run['seconds'].get(phase, 0):.2f} | "
                    f"{fmt_bytes(peak_kb.get('VmRSS', 0) * 1024)} | "
                    f"{fmt_bytes(peak_kb.get('RssAnon', 0) * 1024)} | "
                    f"{fmt_bytes(peak_kb.get('RssFile', 0) * 1024)} |"
                )
    if ranking is not None:
        lines += ["", "### (c) ranking", ""]
        lines.append(
            f"{ranking['shards']} scores shards of {ranking['rows']:,} rows (the last holds the "
            f"rest) in `SCORES_SCHEMA` (K={NUM_CLASSES}, labels on about half the rows"
            + ("; probs in each shard's first row group only" if ranking["lean"] else "")
            + "), written with "
            f"row groups of {SCORE_STAGE_BATCH} rows as the score stage writes them at its default "
            f"batch size; {fmt_bytes(ranking['scores_bytes'])} of scores, generated in "
            f"{fmt_s(ranking['generate_seconds'])}; ranking.parquet "
            f"{fmt_bytes(ranking['ranking_bytes'])}. Each run is `rank(layout, uris, "
            "metric='gini', top_k=10)` in a fresh child process: "
            + ", ".join(
                f"{run['seconds']:.2f} s (CPU {run['cpu_seconds']:.2f} s) / peak RSS "
                f"{fmt_bytes(run['peak'])} / scratch {fmt_bytes(run['scratch'])}"
                for run in ranking["runs"]
            )
            + "."
        )
    if ranking is not None and ranking["profile"] is not None:
        lines += [
            "",
            f"Profile of one more run (cProfile, {fmt_s(ranking['profile']['total'])}; "
            "cumulative seconds):",
            "",
            "| part | seconds | share | calls |",
            "|---|---|---|---|",
        ]
        total = ranking["profile"]["rows"][0][1] or 1.0
        for name, seconds, calls in ranking["profile"]["rows"]:
            lines.append(f"| {name} | {seconds:.2f} | {seconds / total:.0%} | {calls:,} |")
    text = "\n".join(lines) + "\n"
    return text


# --- entry point ---------------------------------------------------------------------------


CHILDREN = {"export": child_export, "pipeline": child_pipeline, "rank": child_rank}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, under a minute")
    parser.add_argument("--keep", action="store_true", help="keep bench/work/ files")
    parser.add_argument(
        "--only",
        default="abc",
        help="sections to run, e.g. 'a' or 'ac' (default abc: all); a report of fewer "
        "sections is only printed unless --out is given",
    )
    parser.add_argument(
        "--work", default=str(DEFAULT_WORK), help="scratch folder (default bench/work)"
    )
    parser.add_argument(
        "--out",
        help=f"Markdown report path (default {DEFAULT_RESULTS.relative_to(BENCH_DIR.parent)}; "
        "--quick only prints unless --out is given)",
    )
    parser.add_argument(
        "--score-repeats",
        type=int,
        help="interleaved raw/stage runs per batch size in (a), best of which is reported "
        f"(default {FULL.score_repeats}; more settle the figure on a noisy machine)",
    )
    parser.add_argument(
        "--rank-samples",
        type=int,
        metavar="N",
        help="(c) ranks N scores in shards of 100,000 instead of 10M, once; the last line "
        "printed is 'rank N samples: S s, peak RSS M MiB'",
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--shard-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](args)
        result["vmhwm_kb"] = proc_status_kb()["VmHWM"]  # this process's peak RSS
        Path(args.result).write_text(json.dumps(result))
        return 0

    mode = "quick" if args.quick else "full"
    sizes = QUICK if args.quick else FULL
    if args.score_repeats:
        sizes = dataclasses.replace(sizes, score_repeats=args.score_repeats)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only)
    if not only or only - set("abc"):
        raise SystemExit(f"--only {args.only!r}: give some of the letters a, b, c.")
    score = memory = ranking = None
    shutil.rmtree(work / "runs", ignore_errors=True)
    started = time.perf_counter()
    try:
        model_path = work / "bench-cnn.onnx"
        say("exporting the CNN to ONNX (child process)")
        model, _, _ = run_child(["export", "--model", str(model_path)])
        if "a" in only:
            score = bench_score(work, sizes, model_path)
            (work / "score-pool.npy").unlink()
            shutil.rmtree(work / "runs", ignore_errors=True)
        if "b" in only:
            memory = bench_memory(work, sizes, model_path)
        if "c" in only:
            ranking = bench_rank(work, sizes, args.rank_samples)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(mode, model, score, memory, ranking)
    text += f"\nWhole benchmark: {time.perf_counter() - started:.0f} s.\n"
    print(text)
    out = args.out or (None if args.quick or only != set("abc") else str(DEFAULT_RESULTS))
    if out:
        Path(out).write_text(text)
        say(f"wrote {out}")
    if ranking is not None and args.rank_samples:
        run = ranking["runs"][0]
        print(
            f"rank {ranking['total']:,} samples: {run['seconds']:.1f} s, "
            f"peak RSS {run['peak'] / MIB:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
