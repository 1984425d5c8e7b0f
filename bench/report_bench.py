"""How fast every page of the report app opens in a browser, warm, with 150 runs under the
root and one of them a 1,000,000-sample run; writes its section of ``bench/RESULTS.md``
(between ``<!-- report-bench -->`` markers, replacing an older one).

Run ``python bench/report_bench.py`` (about 6 minutes on 2 cores, 4 GB of scratch disk with
the default 1x28x28 samples) or ``--samples 20000 --runs 20 --shape 1x8x8`` to check the
script in a minute.

1. Builds the root (``--work``/runs), the stages in-process (``tests.stagekit``):

   - ``bench-gini``: ``--samples`` seeded samples with labels, a linear ONNX classifier,
     shards of 10,000; then the labels of its top 1,000 are imported (``testprio.labels``),
     every tenth one differing from the pool's, so every page shows both label sources;
   - ``bench-entropy``: the same scores ranked by entropy (data, model and scores
     hard-linked, then the real rank and report stages), for Compare;
   - ``evaluation``: a real ``testprio evaluate`` run of the digits (``tests.evalrunkit``);
   - ``small-NNN`` up to ``--runs`` runs in all: one real run of 2,000 samples, the others
     hard links to its files with a run.json of their own (a minute apart), so the root
     fills in seconds.

2. Serves the root with ``testprio report`` and opens each page in headless Chromium at
   1,280 x 3,000 pixels: once to fill the server's caches (the first load, also reported),
   then ``--repeats`` times, each in a new browser page (a new session), within the app's
   15 s cache lifetime. A page is open when the script has finished
   (``data-test-script-state`` is ``notRunning``), its last text is on the page, every
   chart is drawn and every image loaded.

3. Records the app server's peak RSS (``VmHWM``) after the loads.
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
import tempfile
import time
from datetime import datetime, timedelta, timezone
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
CLASSES = 10
CHUNK = 50_000
SHARD = 10_000
IMPORTED = 1_000  # top samples of the big run whose labels are imported
SMALL_SAMPLES = 2_000
TARGET_SECONDS = 2.0
VIEWPORT = {"width": 1280, "height": 3000}
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
# When a page is open: the script has finished, these texts are on it, and at least this
# many charts are drawn and images loaded.
READY = """([texts, charts, images]) => {
  if (document.querySelector('.stApp')?.getAttribute('data-test-script-state')
      !== 'notRunning') return false;
  const body = document.body.innerText;
  if (!texts.every(text => body.includes(text))) return false;
  const drawn = document.querySelectorAll(
    '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg').length;
  const loaded = [...document.querySelectorAll('[data-testid="stImage"] img')]
    .filter(img => img.complete && img.naturalWidth > 0).length;
  return drawn >= charts && loaded >= images;
}"""


def say(text: str) -> None:
    print(f"[report-bench] {text}", file=sys.stderr, flush=True)


def pages(samples: int, runs: int) -> list[tuple[str, str, list[str], int, int]]:
    """(name, URL query, texts, charts, images) of every page timed."""
    big = f"run=bench-gini ({samples:,} samples)"
    return [
        (f"Runs ({runs} runs)", "page=runs", ["Click a run to open it"], 0, 0),
        (
            f"Run, Overview tab, {big}",
            "page=run&run=bench-gini",
            ["Stages", "Random samples"],
            1,
            16,
        ),
        (
            f"Run, Scores tab, {big}",
            "page=run&run=bench-gini&section=Scores",
            ["Bottom 10: the model is surest about these"],
            3,
            20,
        ),
        (
            f"Run, Ranking tab, {big}",
            "page=run&run=bench-gini&section=Ranking",
            ["matching samples, most uncertain first"],
            0,
            0,
        ),
        (
            f"Run, Sample tab (rank 1), {big}",
            "page=run&run=bench-gini&section=Sample",
            ["preprocessed tensor"],
            1,
            1,
        ),
        (
            f"Run, Accuracy and APFD tab (imported and pool labels), {big}",
            "page=run&run=bench-gini&section=Accuracy+and+APFD",
            ["APFD of every prioritizer (pool labels)"],
            4,
            0,
        ),
        (
            "Compare, both 1M-sample runs",
            "page=compare&a=bench-gini&b=bench-entropy",
            ["Samples that moved most"],
            3,
            0,
        ),
        (f"Labels, {big}", "page=labels&run=bench-gini", ["export.zip"], 0, 0),
        ("Evaluation (digits)", "page=evaluation&run=evaluation", ["Prioritizers"], 3, 0),
        (
            f"Run, Overview tab, a {SMALL_SAMPLES:,}-sample run",
            "page=run&run=small-000",
            ["Stages", "Random samples"],
            1,
            16,
        ),
    ]


# --- the root --------------------------------------------------------------------------


def linear_model(path: Path, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = int(np.prod(shape))
    weights = rng.normal(0, 0.05, (width, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return weights


def write_pool(path: Path, samples: int, shape, weights, rng: np.random.Generator) -> None:
    """A Parquet pool (``x`` fixed-size lists, ``label``); 80% of labels agree with the model."""
    width = int(np.prod(shape))
    schema = pa.schema(
        [pa.field("x", pa.list_(pa.float32(), width)), pa.field("label", pa.int64())],
        metadata={b"testprio.shape": json.dumps(list(shape)).encode()},
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


def import_top_labels(layout: RunLayout, count: int) -> None:
    """Import labels for the top ``count``: the pool's, every tenth one moved to another class."""
    from testprio import labels

    top = storage.read_table(layout.ranking, columns=["sample_id", "label"]).slice(0, count)
    rows = top.to_pylist()
    text = "sample_id,label\n" + "".join(
        f"{row['sample_id']},{(row['label'] + 1) % CLASSES if i % 10 == 0 else row['label']}\n"
        for i, row in enumerate(rows)
    )
    labels.import_labels(layout, "bench-labels.csv", data=text.encode())


def small_copies(root: str, layout: RunLayout, count: int) -> None:
    """``count`` more runs like ``layout``: its files hard-linked, a run.json of their own."""
    source = Path(layout.uri)
    record = json.loads((source / "run.json").read_text())
    started = datetime.fromisoformat(record["started"])
    ended = datetime.fromisoformat(record["ended"])
    for index in range(1, count + 1):
        target = Path(root) / f"small-{index:03d}"
        for path in source.rglob("*"):
            if path.is_file() and path.name != "run.json":
                (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target / path.relative_to(source))
        shift = timedelta(minutes=index)
        (target / "run.json").write_text(
            json.dumps(
                {
                    **record,
                    "run_id": target.name,
                    "started": (started - shift).isoformat(),
                    "ended": (ended - shift).isoformat(),
                }
            )
        )


def build_root(work: Path, samples: int, shape: tuple[int, ...], runs: int) -> dict:
    from tests.evalrunkit import make_evaluation
    from tests.stagekit import parameters, run_stages

    rng = np.random.default_rng(SEED)
    root = str(work / "runs")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model, pool = work / "linear.onnx", work / "pool.parquet"
    weights = linear_model(model, shape, rng)
    timings = {}
    started = time.perf_counter()
    write_pool(pool, samples, shape, weights, rng)
    timings["write the pool"] = time.perf_counter() - started
    say(f"pool of {samples:,} samples written in {timings['write the pool']:.1f} s")

    started = time.perf_counter()
    layout_a = run_stages(model, pool, root, "bench-gini", shard_size=SHARD, batch_size=1024)
    timings["bench-gini: every stage"] = time.perf_counter() - started
    say(f"bench-gini in {timings['bench-gini: every stage']:.1f} s")
    started = time.perf_counter()
    import_top_labels(layout_a, min(IMPORTED, samples))
    timings[f"bench-gini: import {IMPORTED:,} labels"] = time.perf_counter() - started

    started = time.perf_counter()
    p = parameters(model, pool, root, "bench-entropy", shard_size=SHARD, metric="entropy")
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
    timings["bench-entropy: rank + report"] = time.perf_counter() - started
    pool.unlink()

    started = time.perf_counter()
    make_evaluation(root, work / "evaluation-inputs")
    timings["evaluation run"] = time.perf_counter() - started

    started = time.perf_counter()
    small_pool = work / "small.parquet"
    write_pool(small_pool, SMALL_SAMPLES, shape, weights, rng)
    small = run_stages(model, small_pool, root, "small-000", shard_size=1_000)
    small_copies(root, small, max(0, runs - 4))
    timings[f"{max(1, runs - 3)} small runs (one built, the rest linked)"] = (
        time.perf_counter() - started
    )
    say(f"root of {len(os.listdir(root))} runs built")
    return timings


# --- the browser -------------------------------------------------------------------------


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


def _navigate(page, click, texts: list[str], charts: int, images: int) -> float:
    """Seconds from ``click()`` (a click in the open app) until the page it opens is open.
    Its texts are not on the page before the click, so their coming marks the new run."""
    for text in texts:
        if page.evaluate("text => document.body.innerText.includes(text)", text):
            raise RuntimeError(f"'{text}' is on the page before the click")
    started = time.perf_counter()
    click()
    page.wait_for_function(READY, arg=[texts, charts, images], timeout=90_000, polling=20)
    return time.perf_counter() - started


def _wait_for_text(page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('.stApp')?.getAttribute('data-test-script-state')"
        " === 'notRunning' && document.body.innerText.includes(text)",
        arg=text,
        timeout=90_000,
        polling=20,
    )


def _open(browser, url: str, texts: list[str], charts: int, images: int) -> float:
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_function(READY, arg=[texts, charts, images], timeout=90_000, polling=20)
        seconds = time.perf_counter() - started
        if page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count():
            raise RuntimeError(f"{url} shows an error")
        if errors:
            raise RuntimeError(f"{url}: {errors[0]}")
        return seconds
    finally:
        page.close()


def _radio(page, label: str):
    """A click on the page ``label`` in the app's page list along the top."""
    return lambda: (
        page.locator('[data-testid="stRadio"]').first.get_by_text(label, exact=True).click()
    )


def _search(page, text: str, matching: int) -> list[str]:
    """On the Runs page: search for ``text`` (``matching`` runs); the names the table shows."""
    box = page.get_by_role("textbox", name="Search runs")
    box.fill(text)
    box.press("Enter")
    _wait_for_text(page, f"{matching} of ")
    page.wait_for_timeout(300)  # the grid draws its rows after the run
    return page.eval_on_selector_all(
        '[data-testid^="glide-cell-1-"]', "cells => cells.map(cell => cell.textContent)"
    )


def _runs_cell(page, row: int, *, tick: bool = False) -> tuple[float, float]:
    """Where the runs table shows row ``row``'s name (or tick box): it is drawn on a canvas."""
    grid = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    return grid["x"] + (16 if tick else 73), grid["y"] + 35 + row * 35 + 17


def time_in_app(browser, base: str, samples: int, runs: int, repeats: int) -> list[dict]:
    """Each page and Run tab reached by a click in one open app, ``1 + repeats`` rounds; the
    first round fills the caches and is not counted. Searching and ticking runs on the Runs
    page (typing, not pages) are not timed."""
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{base}/?page=labels&run=bench-gini")
    page.wait_for_function(READY, arg=[["export.zip"], 0, 0], timeout=180_000)
    big = f"({samples:,} samples)"
    found: dict[str, list[str]] = {}

    def tab(name: str):
        return lambda: page.get_by_role("tab", name=name, exact=True).click()

    def tick_both() -> None:
        names = _search(page, "bench-", 2)
        page.mouse.click(*_runs_cell(page, names.index("bench-gini"), tick=True))
        _wait_for_text(page, "Tick a second run")
        page.mouse.click(*_runs_cell(page, names.index("bench-entropy"), tick=True))
        _wait_for_text(page, "Compare bench-")

    def find_big() -> None:
        found["names"] = _search(page, "bench-gini", 1)

    steps = [
        (f"Runs page ({runs} runs)", _radio(page, "Runs"), ["Click a run to open it"], 0, 0),
        (None, tick_both, None, 0, 0),
        (
            "Compare: the two 1M-sample runs ticked on Runs",
            lambda: page.get_by_role("button", name=re.compile("^Compare bench-")).click(),
            ["Samples that moved most"],
            3,
            0,
        ),
        ("Evaluation page (digits)", _radio(page, "Evaluation"), ["Prioritizers"], 3, 0),
        (None, lambda: (_radio(page, "Runs")(), _wait_for_text(page, "Click a run")), None, 0, 0),
        (None, find_big, None, 0, 0),
        (
            f"Run page, Overview tab, by a click on the run in Runs {big}",
            lambda: page.mouse.click(*_runs_cell(page, found["names"].index("bench-gini"))),
            ["Random samples"],
            1,
            16,
        ),
        (f"Run tab Scores {big}", tab("Scores"), ["Bottom 10: the model is surest"], 3, 20),
        (f"Run tab Ranking {big}", tab("Ranking"), ["matching samples, most uncertain"], 0, 0),
        (f"Run tab Sample, rank 1 {big}", tab("Sample"), ["preprocessed tensor"], 1, 1),
        (
            f"Run tab Accuracy and APFD, imported and pool labels {big}",
            tab("Accuracy and APFD"),
            ["APFD of every prioritizer (pool labels)"],
            4,
            0,
        ),
        (f"Run tab Overview {big}", tab("Overview"), ["Random samples"], 1, 16),
        (f"Labels page {big}", _radio(page, "Labels"), ["export.zip"], 0, 0),
    ]
    times: dict[str, list[float]] = {name: [] for name, *_ in steps if name}
    for round_ in range(1 + repeats):
        for name, action, texts, charts, images in steps:
            if texts is None:
                action()
                continue
            try:
                seconds = _navigate(page, action, texts, charts, images)
            except Exception as exc:
                page.screenshot(path=str(Path(tempfile.gettempdir()) / "report-bench-stuck.png"))
                raise RuntimeError(f"{name}: did not open ({exc.__class__.__name__})") from exc
            if round_ and name:
                times[name].append(seconds)
        say(f"round {round_}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values() if t))
    page.close()
    return [{"page": name, "warm": seconds} for name, seconds in times.items()]


def _serve(command: list[str], port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            if time.time() > deadline:
                server.kill()
                raise RuntimeError(f"{command} did not start") from None
            time.sleep(0.1)


def time_hello(work: Path, repeats: int) -> list[float]:
    """New-session loads of a one-line Streamlit app: what any page costs the browser."""
    from playwright.sync_api import sync_playwright

    script = work / "hello.py"
    script.write_text('import streamlit as st\n\nst.write("hello")\n')
    port = _free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port)]
    server = _serve([*command, "--server.headless", "true"], port)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            url = f"http://127.0.0.1:{port}/"
            loads = [_open(browser, url, ["hello"], 0, 0) for _ in range(1 + repeats)][1:]
            browser.close()
        return loads
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def time_pages(root: str, samples: int, runs: int, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    command = [sys.executable, "-m", "testprio.cli", "report", "--root", root]
    server = _serve([*command, "--port", str(port)], port)
    try:
        rows = []
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            clicks = time_in_app(browser, base, samples, runs, repeats)
            for name, query, texts, charts, images in pages(samples, runs):
                url = f"{base}/?{query}"
                first = _open(browser, url, texts, charts, images)
                warm = [_open(browser, url, texts, charts, images) for _ in range(repeats)]
                rows.append({"page": name, "first": first, "warm": warm})
                each = ", ".join(f"{s:.2f}" for s in warm)
                say(f"{name}: first {first:.2f} s, new sessions {each} s")
            browser.close()
        return {"clicks": clicks, "pages": rows, "peak_rss": _peak_rss(server.pid)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


# --- the results -------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def markdown(samples, shape, runs, timings, measured, started) -> str:
    clicks, rows = measured["clicks"], measured["pages"]
    slowest = max(_median(row["warm"]) for row in clicks)
    verdict = "OK" if slowest <= TARGET_SECONDS else "MISSED"
    built = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    load = os.getloadavg()
    hello = measured["hello"]
    lines = [
        START,
        f"## Report app: every page in Chromium, {runs} runs, a {samples:,}-sample run",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: nproc "
        f"{os.cpu_count()}, {platform.machine()}, Python {platform.python_version()}; load "
        f"average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} after",
        f"- the root: {runs} runs; bench-gini and bench-entropy of {samples:,} samples "
        f"{'x'.join(map(str, shape))} with pool labels and {min(IMPORTED, samples):,} imported "
        f"ones, shards of {SHARD:,}; an evaluation; {SMALL_SAMPLES:,}-sample runs "
        f"(`python bench/report_bench.py`; {built or 'root reused'})",
        f"- headless Chromium, {VIEWPORT['width']} x {VIEWPORT['height']} pixels; a page is "
        "open when its script has finished, its last text is shown, every chart drawn and "
        "every image loaded",
        "",
        f"In the open app (a click on a tab, a page or Compare; {len(clicks[0]['warm'])} rounds "
        "after one that filled the caches):",
        "",
        "| click to | median (s) | each (s) |",
        "|---|---|---|",
    ]
    for row in clicks:
        each = ", ".join(f"{s:.2f}" for s in row["warm"])
        lines.append(f"| {row['page']} | {_median(row['warm']):.2f} | {each} |")
    lines += [
        "",
        "A page's URL opened in a new browser tab (a new session: the browser loads and starts "
        "Streamlit's frontend again; the server's caches filled by the first load). For "
        f"scale, a one-line Streamlit app opens in {_median(hello):.2f} s here "
        f"({', '.join(f'{s:.2f}' for s in hello)}).",
        "",
        "| page | new session, median (s) | each (s) | first load (s) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        each = ", ".join(f"{s:.2f}" for s in row["warm"])
        lines.append(
            f"| {row['page']} | {_median(row['warm']):.2f} | {each} | {row['first']:.2f} |"
        )
    lines += [
        "",
        f"Slowest click, median: {slowest:.2f} s against the target of {TARGET_SECONDS:.0f} s: "
        f"**{verdict}**. App server peak RSS after the loads: "
        f"{measured['peak_rss'] / 2**20:,.0f} MiB. Whole benchmark: "
        f"{time.perf_counter() - started:.0f} s.",
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


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.lower().split("x"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--shape", type=parse_shape, default=(1, 28, 28), help="e.g. 1x8x8")
    parser.add_argument("--runs", type=int, default=150, help="runs under the root in all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--keep", action="store_true", help="keep the root in --work")
    parser.add_argument("--reuse", action="store_true", help="reuse a root kept by --keep")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown file to update")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    root = args.work / "runs"
    try:
        if args.reuse and (root / "small-000" / "report").exists():
            timings = {}
        else:
            timings = build_root(args.work, args.samples, args.shape, args.runs)
        runs = len([name for name in os.listdir(root) if (root / name / "run.json").exists()])
        measured = time_pages(str(root), args.samples, runs, args.repeats)
        measured["hello"] = time_hello(args.work, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    text = markdown(args.samples, args.shape, runs, timings, measured, started)
    print(text)
    write_section(text, args.out)
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
