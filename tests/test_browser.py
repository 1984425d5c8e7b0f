"""The report app in a real browser: ``testprio report`` on a loopback port, loaded in
headless Chromium (Debian's ``chromium``; ``make test`` installs it when missing). The
screenshot of the run page is kept in ``test-artifacts/`` (or ``$TESTPRIO_ARTIFACTS``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _free_port
from tests.evalrunkit import make_evaluation
from tests.reportkit import make_runs

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
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("TESTPRIO_ARTIFACTS", REPO / "test-artifacts"))

# Outside CI a developer without Chromium may skip this test; CI (CI=true) never skips it:
# `make test` installs Chromium, so a missing browser there is a failure.
pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM) and os.environ.get("CI") != "true",
    reason=f"{CHROMIUM} is missing (make test installs chromium)",
)


LINK_NAMES = ["http://evil.example/a", "www.evil.example", "mail@evil.example", "[x](http://evil)"]


def add_link_named_run(root: Path) -> None:
    """``www.evil.example``: the ``labeled`` run again, with class names that look like links."""
    run = root / "www.evil.example"
    shutil.copytree(root / "labeled", run)
    model = json.loads((run / "model" / "model.json").read_text())
    model["class_names"] = LINK_NAMES + [f"digit {i}" for i in range(4, 10)]
    (run / "model" / "model.json").write_text(json.dumps(model))


SERVED: dict[str, Path] = {}  # the root the module's server shows


@pytest.fixture(scope="module")
def report_server(tmp_path_factory):
    """``testprio report --root ROOT --port PORT`` as its own process; yields the URL."""
    folder = tmp_path_factory.mktemp("browser")
    make_runs(str(folder / "runs"), folder / "inputs")
    add_link_named_run(folder / "runs")
    shutil.copytree(folder / "runs" / "labeled", folder / "runs" / "upload")  # takes labels
    make_evaluation(str(folder / "runs"), folder)  # a real `testprio evaluate` run, ~2 s
    SERVED["root"] = folder / "runs"
    port = _free_port()
    log = open(folder / "server.log", "w+b")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "testprio.cli", "report", "--root", str(folder / "runs")]
        + ["--port", str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                log.seek(0)
                raise RuntimeError(f"the app did not start: {log.read()[-2000:]!r}") from None
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=20)
    log.seek(0)
    printed = log.read().decode()
    log.close()
    assert f"testprio report on {folder / 'runs'}: http://127.0.0.1:{port}/" in printed


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:  # each launch starts from a fresh temporary profile
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


CHARTS_DRAWN = (
    'n => document.querySelectorAll(\'[data-testid="stVegaLiteChart"] canvas, '
    '[data-testid="stVegaLiteChart"] svg\').length >= n'
)
IMAGES_LOADED = (
    "n => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
    ".filter(img => img.complete && img.naturalWidth > 0).length >= n"
)
# Each tab of the Run page: its headings, and the charts drawn and images loaded when open.
RUN_TABS = {
    "Overview": (["Model", "Data", "Stages"], 1, 16),
    "Scores": (["Scores", "Most and least uncertain"], 3, 20),
    "Ranking": (["Ranking"], 0, 0),
    "Sample": (["Sample"], 1, 1),
    "Accuracy and APFD": (["Accuracy and APFD"], 2, 0),
}


def test_run_page_renders_every_tab_in_chromium(report_server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 3000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{report_server}/?page=run&run=labeled")
    page.get_by_role("heading", name="Run labeled").wait_for(timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, (headings, charts, images) in RUN_TABS.items():
        page.get_by_role("tab", name=name, exact=True).click()
        for heading in headings:
            page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=60_000)
        # Charts are drawn (Vega renders each into a canvas or SVG) and images load.
        page.wait_for_function(CHARTS_DRAWN, arg=charts, timeout=60_000)
        page.wait_for_function(IMAGES_LOADED, arg=images, timeout=60_000)
        if name == "Scores":
            page.get_by_text("Top 10: label these first").wait_for()
        if name == "Ranking":
            page.get_by_text("matching samples, most uncertain first").wait_for()
        if name == "Sample":  # rank 1 without asking
            page.get_by_text("Class probabilities").first.wait_for(timeout=60_000)
        if name == "Accuracy and APFD":
            page.get_by_text("APFD = 1 − (r₁ + … + rₖ) / (k · n) + 1 / (2n)").wait_for()
        page.wait_for_timeout(1000)  # let the charts' transitions settle before the screenshot
        slug = name.lower().replace(" ", "-")
        page.screenshot(path=str(ARTIFACTS / f"report-run-{slug}.png"))
    # No Deploy button or other developer options in the toolbar.
    assert page.get_by_role("button", name="Deploy").count() == 0
    assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
    page.goto(f"{report_server}/?page=run&run=labeled&section=Ranking")  # a tab by its link
    page.get_by_text("matching samples, most uncertain first").wait_for(timeout=60_000)
    assert page.get_by_role("heading", name="Model", exact=True).count() == 0
    assert (ARTIFACTS / "report-run-overview.png").stat().st_size > 50_000
    assert not errors, errors
    page.close()


def runs_grid_cell(page, row: int, *, tick: bool = False) -> tuple[float, float]:
    """Where row ``row`` (0-based) of the runs table shows the run's name (or its tick box)
    on screen: the table is drawn on a canvas, 35 pixels a row under a 35-pixel header."""
    box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    x = box["x"] + (16 if tick else 33 + 40)
    return x, box["y"] + 35 + row * 35 + 17


def search_runs(page, text: str) -> list[str]:
    """Search the runs table; the run names it then shows (its cells for screen readers)."""
    box = page.get_by_role("textbox", name="Search runs")
    box.fill(text)
    box.press("Enter")
    # The count that names this search: the table under it shows its rows.
    page.get_by_text(f"runs match “{text}”").wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    return page.eval_on_selector_all(
        '[data-testid^="glide-cell-1-"]', "cells => cells.map(cell => cell.textContent)"
    )


def test_runs_table_fits_1280_pixels_and_opens_and_compares_runs(report_server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(report_server)
    page.get_by_text("Click a run to open it").wait_for(timeout=60_000)
    assert search_runs(page, "entropy") == ["entropy"]
    # Every column of a ranking run shows without scrolling sideways, and nothing says None.
    widths = page.locator(".dvn-scroller").first.evaluate("s => [s.scrollWidth, s.clientWidth]")
    assert widths[0] <= widths[1], widths
    cells = page.eval_on_selector_all(
        '[data-testid^="glide-cell-"]', "cells => cells.map(cell => cell.textContent)"
    )
    assert "None" not in cells and "gini" not in cells and "entropy" in cells
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-runs-page.png"))
    page.mouse.click(*runs_grid_cell(page, 0))  # a click on the run opens it
    page.get_by_role("heading", name="Run entropy").wait_for(timeout=60_000)
    assert "page=run" in page.url and "run=entropy" in page.url

    page.get_by_text("Runs", exact=True).click()
    page.get_by_text("Click a run to open it").wait_for(timeout=60_000)
    names = search_runs(page, "digits.npz")
    page.mouse.click(*runs_grid_cell(page, names.index("labeled"), tick=True))
    page.get_by_text("Tick a second run to compare").wait_for(timeout=60_000)
    page.mouse.click(*runs_grid_cell(page, names.index("entropy"), tick=True))
    page.get_by_role("button", name=re.compile(r"^Compare (labeled|entropy) and ")).click()
    page.get_by_role("heading", name="Compare two runs").wait_for(timeout=60_000)
    page.get_by_text("Spearman rank correlation").wait_for(timeout=60_000)
    assert not errors, errors
    page.close()


def test_hostile_run_names_stay_text_in_chromium(report_server, browser):
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{report_server}/?page=run&run=hostile&section=Scores")
    page.get_by_text("Top 10: label these first").wait_for(timeout=60_000)
    page.get_by_text("<img src=x onerror=alert(1)>.npz[", exact=False).first.wait_for()
    page.wait_for_timeout(500)
    assert dialogs == []  # neither the class name nor the file name ran as script
    page.close()


def test_link_like_run_data_is_not_linked_in_chromium(report_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 4000})
    page.goto(f"{report_server}/?page=run&run=www.evil.example&section=Scores")
    page.get_by_text("Top 10: label these first").wait_for(timeout=60_000)
    # Shown as text, with invisible word joiners (U+2060) where an autolink would start.
    page.get_by_role("heading", name=re.compile(r"^Run www\W?\.evil\.example$")).wait_for()
    page.get_by_text(re.compile(r"http\W?://evil\.example/a")).first.wait_for()
    page.wait_for_timeout(500)
    # Only links that leave the page count: Streamlit's own heading anchors stay.
    hrefs = page.eval_on_selector_all(
        "a[href]",
        "links => links.map(link => link.href).filter(h => !h.startsWith(location.origin))",
    )
    assert [href for href in hrefs if "evil" in href] == [], hrefs  # no link, autolink, mailto
    page.close()


def test_labels_uploaded_in_chromium_show_the_labelled_figures(report_server, browser, tmp_path):
    from tests.reportkit import digits

    _, truth = digits()
    upload = tmp_path / "batch.csv"
    ids = [i for i in range(11) if i != 7]  # sample 7 is quarantined (NaN), not ranked
    upload.write_text("sample_id,label\n" + "".join(f"{i},{truth[i]}\n" for i in ids))
    page = browser.new_page(viewport={"width": 1280, "height": 3000})
    page.goto(f"{report_server}/?page=labels&run=upload")
    page.get_by_text("Labelling export of the top 5 (zip)").wait_for(timeout=60_000)
    page.get_by_text("No labels imported into this run yet.").wait_for()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(upload))
    page.get_by_text(re.compile(r"^Imported 10 labels from batch\.csv")).wait_for(timeout=60_000)
    record = json.loads((SERVED["root"] / "upload" / "run.json").read_text())
    assert record["labelled"]["samples"] == 10 and record["labelled"]["file"] == "batch.csv"
    accuracy = page.locator('[data-testid="stMetric"]', has_text="labelled accuracy")
    assert f"{record['labelled']['accuracy']:.4f}" in accuracy.inner_text()
    assert (SERVED["root"] / "upload" / "labels.parquet").is_file()
    # The run's static report.html is rendered again with them.
    report = (SERVED["root"] / "upload" / "report" / "report.html").read_text()
    assert 'id="imported-labels"' in report and "10 samples labelled (ranks" in report
    # The imported labels are the run's labels at once on the Run page, beside the pool's.
    page.get_by_role("button", name="Open the run's Accuracy and APFD").click()
    page.get_by_role("heading", name="Run upload").wait_for(timeout=60_000)
    headline = page.locator('[data-testid="stMetric"]', has_text="accuracy (imported labels)")
    assert f"{record['labelled']['accuracy']:.4f}" in headline.inner_text(timeout=60_000)
    page.locator('[data-testid="stMetric"]', has_text="accuracy (pool labels)").wait_for()
    page.get_by_role("tab", name="Ranking", exact=True).click()
    page.get_by_text("label from says which").wait_for(timeout=60_000)
    page.close()


def test_evaluation_page_renders_its_charts_in_chromium(report_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 4000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{report_server}/?page=evaluation&run=evaluation")
    for section in ("Best per budget", "Fault detection", "Retraining", "Prioritizers"):
        page.get_by_role("heading", name=section, exact=True).wait_for(timeout=60_000)
    # (a word joiner follows "retraining", so that ":" never starts an autolink)
    page.get_by_text("only the classifier head (the ONNX model's last linear layer) was").wait_for()
    # Three charts drawn (faults at each budget, APFD bars, accuracy gain), and no error
    # element anywhere: neither the app's alerts nor a chart that failed to render.
    page.wait_for_function(
        'document.querySelectorAll(\'[data-testid="stVegaLiteChart"] canvas, '
        '[data-testid="stVegaLiteChart"] svg\').length >= 3',
        timeout=60_000,
    )
    page.wait_for_timeout(1000)
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("Error", exact=True).count() == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-evaluation-page.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_report_html_renders_under_its_content_security_policy(report_server, browser, tmp_path):
    """report.html as a file: its policy blocks nothing the page uses (inline styles, data:
    images, inline SVG) and Chromium enforces it (an injected script would not run)."""
    page = browser.new_page()
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    html = SERVED["root"] / "labeled" / "report" / "report.html"
    page.goto(html.as_uri())
    widths = page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
    assert widths and all(width > 0 for width in widths)
    assert page.eval_on_selector_all("svg", "charts => charts.length") >= 6
    header = page.eval_on_selector("header", "h => getComputedStyle(h).backgroundColor")
    assert header == "rgb(36, 59, 83)"  # the inline <style> applies
    assert not [text for text in messages if "Content Security Policy" in text], messages
    hostile = tmp_path / "hostile.html"
    hostile.write_text(
        html.read_text().replace("</main>", "<script>document.title = 'ran'</script></main>")
    )
    page.goto(hostile.as_uri())
    assert page.title() != "ran"
    assert any("Content Security Policy" in text for text in messages), messages
    page.close()
