"""examples/quickstart.ipynb, executed end to end with nbclient in a kernel of this Python
environment, in a fresh working folder: every cell runs, and what it shows is what the run,
the evaluation, the export and the compiled pipeline it wrote hold."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

import testprio
from testprio.client import load_package

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
# A kernel spec of our own, written for the test: the "python3" spec that Jupyter finds may
# be another installation's Python (a user-level spec comes first on Jupyter's path).
KERNEL = "testprio-test"
CELL_TIMEOUT_S = 300


def _cell(notebook, cell_id: str):
    return next(cell for cell in notebook.cells if cell.get("id") == cell_id)


def _text(cell) -> str:
    """Everything a code cell printed or showed as plain text."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after running it in a new folder (its working directory), the folder,
    and how long it took."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    folder = tmp_path_factory.mktemp("notebook")
    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels / KERNEL)  # argv: this interpreter, -m ipykernel_launcher
    assert json.loads((kernels / KERNEL / "kernel.json").read_text())["argv"][0] == sys.executable
    manager = AsyncKernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(folder)}},
    )
    # The submit cell must take its no-cluster branch, whatever this shell has set.
    env = {name: value for name, value in os.environ.items() if name != "KFP_HOST"}
    started = time.monotonic()
    client.execute(env=env)
    return notebook, folder / "demo-output" / "quickstart", time.monotonic() - started


def test_the_stored_notebook_is_valid_and_clean():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "import testprio" in code[0].source


@pytest.mark.pipeline
def test_the_notebook_shows_the_top_of_its_run(executed):
    notebook, work, seconds = executed
    print(f"the notebook ran in {seconds:.1f} s")
    (run,) = (work / "runs").iterdir()
    result = testprio.RunResult.open(str(run))
    assert result.record["status"] == "succeeded"
    assert result.summary["counts"]["ranked"] == 300
    assert str(run) in _text(_cell(notebook, "run"))
    shown = _text(_cell(notebook, "ranking"))
    top = result.ranking(columns=["rank", "sample_id"], top=5)
    for row, (rank, sample_id) in enumerate(top.itertuples(index=False)):
        assert re.search(rf"^{row}\s+{rank}\s+{sample_id}\s", shown, re.MULTILINE), shown
    accuracy = result.summary["labels"]["accuracy"]
    assert f"accuracy {accuracy:.3f}" in _text(_cell(notebook, "figures"))
    chart = _cell(notebook, "chart").outputs[-1]["data"]["text/html"]  # Altair's renderer
    assert "vegaEmbed" in chart and f"Samples per {result.summary['metric']} bin" in chart


@pytest.mark.pipeline
def test_the_notebook_evaluates_exports_and_compiles(executed):
    notebook, work, _ = executed
    (evaluation,) = (work / "evaluations").iterdir()
    apfd = {
        name: figures["apfd"]["normalized"]
        for name, figures in json.loads((evaluation / "evaluation.json").read_text())[
            "prioritizers"
        ].items()
    }
    assert sorted(apfd) == ["entropy", "gini", "random"]
    assert apfd["gini"] > apfd["random"]
    assert f"{apfd['gini']:.6f}" in _text(_cell(notebook, "evaluate"))

    (run,) = (work / "runs").iterdir()
    with open(work / "to-label" / run.name / "labels.csv", newline="") as handle:
        exported = [int(row["sample_id"]) for row in csv.DictReader(handle)]
    ranking = testprio.RunResult.open(str(run)).ranking(columns=["sample_id"], top=20)
    assert exported == ranking["sample_id"].tolist()

    package = load_package(str(work / "prioritize.yaml"))
    assert {"model", "data", "root", "top_k"} <= set(package.parameters)
    submit = _text(_cell(notebook, "submit"))
    assert "KFP_HOST is not set, so nothing was submitted" in submit
    assert "gs://YOUR-BUCKET/runs" in submit and "'top_k': 20" in submit
