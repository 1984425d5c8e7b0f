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


def test_run_page_renders_in_chromium(report_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 6000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{report_server}/?page=run&run=labeled")
    for section in [
        "Model",
        "Data",
        "Stages",
        "Scores",
        "Most and least uncertain",
        "Ranking",
        "Sample",
    ]:
        page.get_by_role("heading", name=section, exact=True).wait_for(timeout=60_000)
    page.get_by_role("heading", name="Labels", exact=True).wait_for(timeout=60_000)
    page.get_by_text("Top 10: label these first").wait_for()
    # Charts are drawn (Vega renders each into a canvas or SVG) and sample images load:
    # 16 random samples, two galleries of 10.
    page.wait_for_function(
        'document.querySelectorAll(\'[data-testid="stVegaLiteChart"] canvas, '
        '[data-testid="stVegaLiteChart"] svg\').length >= 6',
        timeout=60_000,
    )
    page.wait_for_function(
        "[...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length >= 36",
        timeout=60_000,
    )
    page.get_by_text("APFD = 1 − (r₁ + … + rₖ) / (k · n) + 1 / (2n)").wait_for()
    # No Deploy button or other developer options in the toolbar.
    page.wait_for_timeout(500)
    assert page.get_by_role("button", name="Deploy").count() == 0
    assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
    assert page.get_by_role("heading", name="Run labeled").is_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1000)  # let the charts' transitions settle before the screenshot
    shot = ARTIFACTS / "report-run-page.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 50_000
    assert not errors, errors
    page.close()


def test_hostile_run_names_stay_text_in_chromium(report_server, browser):
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{report_server}/?page=run&run=hostile")
    page.get_by_text("Top 10: label these first").wait_for(timeout=60_000)
    page.get_by_text("<img src=x onerror=alert(1)>.npz[", exact=False).first.wait_for()
    page.wait_for_timeout(500)
    assert dialogs == []  # neither the class name nor the file name ran as script
    page.close()


def test_link_like_run_data_is_not_linked_in_chromium(report_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 4000})
    page.goto(f"{report_server}/?page=run&run=www.evil.example")
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
    page = browser.new_page(viewport={"width": 1400, "height": 3000})
    page.goto(f"{report_server}/?page=downloads&run=upload")
    page.get_by_text("Labelling export of the top 5 (zip)").wait_for(timeout=60_000)
    page.get_by_text("No labels imported into this run yet.").wait_for()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(upload))
    page.get_by_text(re.compile(r"^Imported 10 labels from batch\.csv")).wait_for(timeout=60_000)
    record = json.loads((SERVED["root"] / "upload" / "run.json").read_text())
    assert record["labelled"]["samples"] == 10 and record["labelled"]["file"] == "batch.csv"
    accuracy = page.locator('[data-testid="stMetric"]', has_text="labelled accuracy")
    assert f"{record['labelled']['accuracy']:.4f}" in accuracy.inner_text()
    assert (SERVED["root"] / "upload" / "labels.parquet").is_file()
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
