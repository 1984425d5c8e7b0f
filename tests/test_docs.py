"""The documentation holds together: every relative Markdown link in docs/ and README.md
leads to a file that exists (and, with a #fragment, to a heading of that file), every docs
page path that code, tests, manifests or notebooks name exists, docs/index.md lists
every page, and no page is over 20 KB (a longer one is several pages by purpose: tutorial,
how-to, reference, explanation)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
# [text](target) and [text](target "title"); images too. Code spans and fenced blocks are
# taken out first: `[x](y)` there is an example, not a link.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:
MAX_PAGE_BYTES = 20_000
DOC_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]+?\.md\b")
# Where docstrings, error sentences, comments and notebooks name docs pages.
SOURCES = ("testprio", "components", "pipelines", "report_app", "manifests", "images", "bench")
SOURCES += ("demo", "tests", "examples", "docs")
TOP_FILES = ("README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".html", ".j2", ".ipynb", ""}


def _prose(text: str) -> str:
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The #fragments the headings of ``page`` give (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        anchor = _anchor(heading.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """Every relative link of ``page`` that leads nowhere, as 'target (why)'."""
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if EXTERNAL.match(target):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment} in {resolved.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} has broken links"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_page_is_over_20_kb(page):
    size = page.stat().st_size
    assert size <= MAX_PAGE_BYTES, (
        f"{page.relative_to(ROOT)} is {size:,} bytes, over {MAX_PAGE_BYTES:,}: split it by purpose"
        " (a how-to, a reference page, an explanation) and list the new pages in docs/index.md"
    )


def test_docs_index_lists_every_page():
    index = ROOT / "docs" / "index.md"
    linked = {
        (index.parent / target.partition("#")[0]).resolve()
        for target in LINK.findall(_prose(index.read_text(encoding="utf-8")))
    }
    unlisted = [
        str(page.relative_to(ROOT))
        for page in PAGES
        if page.parent != ROOT and page != index and page.resolve() not in linked
    ]
    assert unlisted == [], "docs/index.md does not list these pages"


def _source_files():
    """The repository's files (git's list: not other work lying in the checkout) that may
    name a docs page."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--", *TOP_FILES, *SOURCES],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        paths = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file
        paths = [ROOT / name for name in TOP_FILES]
        paths += [path for folder in SOURCES for path in sorted((ROOT / folder).rglob("*"))]
    for path in paths:
        if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
            yield path


def test_doc_paths_named_in_the_sources_exist():
    missing = [
        f"{path.relative_to(ROOT)}: {found}"
        for path in _source_files()
        for found in DOC_PATH.findall(path.read_text(encoding="utf-8", errors="replace"))
        if not (ROOT / found).is_file()
    ]
    assert missing == [], "these name docs pages that do not exist"


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading) [web](https://example.com/x.md)\n"
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](nowhere.md) [bad anchor](there.md#no-such-heading)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "nowhere.md (no such file)",
        "there.md#no-such-heading (no heading #no-such-heading in there.md)",
    ]
