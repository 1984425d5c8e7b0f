"""Compile every component to its own YAML under components/yaml/ (``make components``).

The YAML files let a user load a testprio stage into their own pipeline without importing
this package (``kfp.components.load_component_from_file("components/yaml/score.yaml")``).
They name the images of ``components.images`` as imported: tests/test_component_yaml.py
checks the committed files against a fresh compile with the default registry and tag.

    python -m components.compile_yaml [--out components/yaml]
"""

from __future__ import annotations

import argparse
import os

from kfp import compiler

from components.convert import convert_onnx, convert_paddle, convert_pytorch, convert_tensorflow
from components.ingest import ingest
from components.rank import rank
from components.reference import reference
from components.report import report
from components.score import score
from components.start import start

YAML_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "yaml")
# File name (without .yaml) -> component; a name is the component's own (its KFP name).
COMPONENTS = {
    "start": start,
    "ingest": ingest,
    "convert-onnx": convert_onnx,
    "convert-pytorch": convert_pytorch,
    "convert-tensorflow": convert_tensorflow,
    "convert-paddle": convert_paddle,
    "reference": reference,
    "score": score,
    "rank": rank,
    "report": report,
}


def compile_components(out: str = YAML_FOLDER) -> list[str]:
    """Write ``{out}/{name}.yaml`` for every component; returns the paths written."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for name, component in COMPONENTS.items():
        path = os.path.join(out, f"{name}.yaml")
        compiler.Compiler().compile(component, package_path=path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=YAML_FOLDER, help="folder for the YAML files")
    for path in compile_components(parser.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
