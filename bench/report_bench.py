"""How long the report app takes to open a 1,000,000-sample run; writes its section of
``bench/RESULTS.md`` (between ``<!-- report-bench -->`` markers, replacing an older one).

Run ``python bench/report_bench.py`` (about 4 minutes on 2 cores, 6 GB of scratch disk) or
``--samples 20000`` to check the script quickly.

1. Builds a real run with the pipeline's stages in-process (``tests.stagekit.run_stages``:
   start, ingest, convert, score every shard, rank, report): 1,000,000 seeded 1x28x28
   float32 samples with labels, a linear ONNX classifier, shards of 10,000 (100 shards).
   A second run ranks the same scores by entropy (data, model and scores hard-linked, then
   the real rank and report stages) so that Compare has two 1M-sample runs.
2. Times each page's script run in ``streamlit.testing.v1.AppTest`` with cold app caches
   (``st.cache_data.clear()``; the files themselves are in the OS page cache).
3. Times the Run page in a real browser: ``testprio report`` on a loopback port, headless
   Chromium, from navigation until every section heading and the ranking table's first
   row are on the page; the first load after the server started and a fresh session.
4. Records the app server's peak RSS (``VmHWM``) after those loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testprio import stages, storage  # noqa: E402
from testprio.layout import RunLayout  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
DEFAULT_WORK = REPO / "bench" / "work" / "report"
START, END = "<!-- report-bench:start -->", "<!-- report-bench:end -->"
SEED = 20240611
SHAPE = (1, 28, 28)
CLASSES = 10
CHUNK = 50_000
TARGET_SECONDS = 3.0
CHROMIUM = os.environ.get("TESTPRIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECTIONS = ["Model", "Data", "Stages", "Scores", "Most and least uncertain", "Ranking", "Labels"]


def say(text: str) -> None:
    print(f"[report-bench] {text}", file=sys.stderr, flush=True)


def linear_model(path: Path, rng: np.random.Generator) -> np.ndarray:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = int(np.prod(SHAPE))
    weights = rng.normal(0, 0.05, (width, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return weights


def write_pool(path: Path, samples: int, weights: np.ndarray, rng: np.random.Generator) -> None:
    """A Parquet pool (``x`` fixed-size lists, ``label``); 80% of labels agree with the model."""
    width = int(np.prod(SHAPE))
    schema = pa.schema(
        [pa.field("x", pa.list_(pa.float32(), width)), pa.field("label", pa.int64())],
        metadata={b"testprio.shape": json.dumps(list(SHAPE)).encode()},
    )
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(0, samples, CHUNK):
            n = min(CHUNK, samples - start)
            x = rng.random((n, width), dtype=np.float32)
            predicted = (x @ weights).argmax(axis=1)
            noise = rng.integers(0, CLASSES, n)
            labels = np.where(rng.random(n) < 0.8, predicted, noise)
            values = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), width)
            writer.write_batch(pa.record_batch([values, pa.array(labels)], schema=schema))


def build_runs(work: Path, samples: int) -> tuple[str, dict[str, float]]:
    from tests.stagekit import parameters, run_stages

    rng = np.random.default_rng(SEED)
    root = str(work / "runs")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model, pool = work / "linear.onnx", work / "pool.parquet"
    weights = linear_model(model, rng)
    started = time.perf_counter()
    write_pool(pool, samples, weights, rng)
    timings = {"write the pool": time.perf_counter() - started}
    say(f"pool of {samples:,} samples written in {timings['write the pool']:.1f} s")

    started = time.perf_counter()
    layout_a = run_stages(model, pool, root, "bench-gini", shard_size=10_000, batch_size=1024)
    timings["run A: every stage"] = time.perf_counter() - started
    say(f"run A (gini) in {timings['run A: every stage']:.1f} s")

    started = time.perf_counter()
    p = parameters(model, pool, root, "bench-entropy", shard_size=10_000, metric="entropy")
    run_uri = stages.start_run(p["root"], p["run_id"], p)
    layout_b = RunLayout(run_uri)
    for folder in ("data", "model", "scores"):
        source = Path(layout_a.uri) / folder
        for name in os.listdir(source):
            (Path(layout_b.uri) / folder).mkdir(parents=True, exist_ok=True)
            os.link(source / name, Path(layout_b.uri) / folder / name)
    scores = [storage.join(layout_b.scores_dir, n) for n in storage.list_names(layout_b.scores_dir)]
    stages.rank_scores(run_uri, scores, "entropy", 10)
    stages.report_run(run_uri, 10)
    timings["run B: rank + report"] = time.perf_counter() - started
    for name in ("rank", "report"):
        record = storage.read_json(storage.join(layout_a.stages_dir, f"{name}.json"))
        timings[f"run A: {name} stage"] = record["seconds"]
    pool.unlink()
    return root, timings


def time_pages(root: str, repeats: int, samples: int) -> list[dict]:
    import streamlit as st
    from streamlit import logger
    from streamlit.testing.v1 import AppTest

    logger.set_log_level("error")
    os.environ["TESTPRIO_REPORT_ROOT"] = root
    middle = max(1, samples // 100)  # the middle page at 50 rows a page
    pages = [
        ("Runs", {"page": "runs"}),
        (f"Run ({samples:,} samples)", {"page": "run", "run": "bench-gini"}),
        (f"Run, ranking page {middle:,} of {2 * middle:,}", {"page": "run", "run": "bench-gini"}),
        ("Run, ranking filtered to one class", {"page": "run", "run": "bench-gini"}),
        ("Compare (both runs)", {"page": "compare", "a": "bench-gini", "b": "bench-entropy"}),
        ("Downloads", {"page": "downloads", "run": "bench-gini"}),
    ]
    rows = []
    for name, query in pages:
        seconds = []
        for _ in range(repeats):
            st.cache_data.clear()
            app = AppTest.from_file(str(REPO / "report_app" / "app.py"), default_timeout=300)
            for key, value in query.items():
                app.query_params[key] = value
            if "ranking page" in name or "filtered" in name:
                app.run()  # the page as opened, then the interaction is timed
                st.cache_data.clear()
                if "ranking page" in name:
                    app.number_input(key="rank-page").set_value(middle)
                else:
                    app.multiselect(key="rank-classes").select("3")
            started = time.perf_counter()
            app.run()
            seconds.append(time.perf_counter() - started)
            if app.exception:
                raise RuntimeError(f"{name}: {app.exception[0].value}")
        rows.append({"page": name, "seconds": seconds})
        say(f"{name}: {', '.join(f'{s:.2f}' for s in seconds)} s")
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss(pid: int) -> int:
    total = 0
    for process in [pid, *_children(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{process}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]) * 1024)
    return total


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def time_browser(root: str) -> dict:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "testprio.cli", "report", "--root", root, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the report app did not start") from None
                time.sleep(0.1)
        loads = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            for _ in range(3):
                page = browser.new_page(viewport={"width": 1400, "height": 6000})
                started = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/?page=run&run=bench-gini")
                for section in SECTIONS:
                    page.get_by_role("heading", name=section, exact=True).wait_for(timeout=120_000)
                page.get_by_text("matching samples, most uncertain first").wait_for()
                loads.append(time.perf_counter() - started)
                page.close()
            browser.close()
        return {"loads": loads, "peak_rss": _peak_rss(server.pid)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def markdown(samples, timings, pages, browser, started) -> str:
    run_page = min(pages[1]["seconds"])
    first, *later = browser["loads"]
    verdict = "OK" if max(run_page, min(later or [first])) <= TARGET_SECONDS else "MISSED"
    built = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    shards = -(-samples // 10_000)
    lines = [
        START,
        f"## Report app: opening a {samples:,}-sample run",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: nproc "
        f"{os.cpu_count()}, {platform.machine()}, Python {platform.python_version()}",
        f"- the run: {samples:,} samples 1x28x28 with labels, {shards} shards of 10,000, ranking "
        "row groups of 65,536; built with the pipeline's stages in-process "
        f"(`python bench/report_bench.py`; {built or 'runs reused'})",
        "",
        "| what | seconds | target | status |",
        "|---|---|---|---|",
        f"| Run page script, cold app caches (AppTest, best of {len(pages[1]['seconds'])}) | "
        f"{run_page:.2f} | <= {TARGET_SECONDS:.0f} | {verdict} |",
        f"| Run page in headless Chromium, first load after the server started | {first:.2f} | | |",
        f"| Run page in headless Chromium, a new session (best of {len(later)}) | "
        f"{min(later):.2f} | <= {TARGET_SECONDS:.0f} | {verdict} |",
    ]
    for row in pages:
        lines.append(
            f"| {row['page']} script, cold caches (runs: "
            f"{', '.join(f'{s:.2f}' for s in row['seconds'])}) | {min(row['seconds']):.2f} | | |"
        )
    lines += [
        f"| app server peak RSS after the loads | {browser['peak_rss'] / 2**20:,.0f} MiB | | |",
        "",
        "The Run page reads run.json, model.json, the manifest, summary.json and report.json "
        "(the report stage's figures: fault-detection curve, confusion matrix, pool statistics), "
        "one row group of ranking.parquet for the first page of the table, the last row group "
        "for the bottom gallery, and single row groups of the few data and score shards that "
        "hold the gallery and random samples. It never reads every probability: those stay in "
        "the score shards. Browser times run from navigation until every section heading and "
        "the ranking table's caption are on the page (charts draw right after); the first load "
        "after start includes the server importing the app's modules.",
        "",
        f"Whole benchmark: {time.perf_counter() - started:.0f} s.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = RESULTS) -> None:
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _: text, old)
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + text
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--keep", action="store_true", help="keep the runs in --work")
    parser.add_argument("--reuse", action="store_true", help="reuse runs kept by --keep")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown file to update")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.reuse and (args.work / "runs" / "bench-entropy" / "report").exists():
            root, timings = str(args.work / "runs"), {}
        else:
            root, timings = build_runs(args.work, args.samples)
        pages = time_pages(root, args.repeats, args.samples)
        browser = time_browser(root)
        say(f"browser loads: {', '.join(f'{s:.2f}' for s in browser['loads'])} s")
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    text = markdown(args.samples, timings, pages, browser, started)
    print(text)
    write_section(text, args.out)
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
