"""The constraint files that make ``make setup`` and ``make label-studio`` install the
environments as tested: each pins what it must, and each pin satisfies what the project asks.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not a name==version pin"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _project_requirements() -> list[Requirement]:
    """What pyproject.toml asks for, every extra included (read from the installed metadata,
    which ``make setup`` rewrites whenever pyproject.toml changes)."""
    return [Requirement(text) for text in metadata.requires("testprio")]


def test_every_project_requirement_is_pinned_within_its_range():
    pins = _pins(REPO / "constraints-dev.txt")
    for requirement in _project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints-dev.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints-dev.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )


@pytest.mark.parametrize(
    "constraints", ["constraints-dev.txt", "tests/label-studio-constraints.txt"]
)
def test_constraint_files_are_plain_pins(constraints):
    assert _pins(REPO / constraints)


def test_label_studio_constraints_pin_the_makefile_version():
    makefile = (REPO / "Makefile").read_text()
    version = next(
        line.split(":=")[1].strip()
        for line in makefile.splitlines()
        if line.startswith("LABEL_STUDIO_VERSION")
    )
    pins = _pins(REPO / "tests/label-studio-constraints.txt")
    assert pins["label-studio"] == Version(version)
