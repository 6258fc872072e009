"""The docs and the code agree: examples run and are shown, snippets run, the site builds.

- ``docs/examples/*.py`` run as scripts, and every page that names one shows its code once
  built (an include line that a formatter mangled shows up as text instead: that fails).
- Every docstring example in the package runs under doctest.
- Every ``python`` block of README.md runs as written.
- Tests named in the troubleshooting table exist.
"""

from __future__ import annotations

import ast
import doctest
import html
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CHILD_GPU_ENV, QUIET_ENV, run_fresh

import tfplace

pytestmark = pytest.mark.slow


ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
PAGES = sorted(DOCS.glob("*.md"))

#: A pymdownx.snippets include line in any spacing, as it reads when it was not expanded
#: (``ruff format`` turns ``--8<-- "a.py"`` into ``--8 < --"a.py"``, valid Python to it).
INCLUDE_LINE = re.compile(r"-+\s*8\s*<\s*-+")
EXAMPLE_REF = re.compile(r"docs/examples/(\w+\.py)")


# ----------------------------------------------------------------------------- examples


#: Examples that need an engine are run by that engine's test, under it, instead of here.
RUN_ELSEWHERE = {"ray_train.py": "cluster/test_ray.py"}
RUN_HERE = [p for p in EXAMPLES if p.name not in RUN_ELSEWHERE]


def test_examples_run_elsewhere_are_run_there() -> None:
    for example, test_file in RUN_ELSEWHERE.items():
        assert (DOCS / "examples" / example).exists(), example
        assert f"docs/examples/{example}" in (ROOT / "tests" / test_file).read_text().replace(
            '"docs" / "examples" / "', "docs/examples/"
        ), (example, test_file)


@pytest.mark.slow
@pytest.mark.parametrize("script", RUN_HERE, ids=[p.stem for p in RUN_HERE])
def test_docs_examples_run(script: Path, tmp_path: Path) -> None:
    # The examples write through tempfile (mkdtemp), which honours TMPDIR: their files land
    # in this test's folder, not in /tmp.
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, **QUIET_ENV, **CHILD_GPU_ENV, "TMPDIR": str(tmp_path)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


# ----------------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as ``mkdocs build --strict`` builds it, once for this module."""
    return build_site(tmp_path_factory.mktemp("site"))


def build_site(out: Path) -> Path:
    """Build the docs into ``out`` strictly; fail on an error or any warning."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: install the 'test' or 'docs' extra")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def built_page(site: Path, page: Path) -> Path:
    """Where mkdocs writes ``docs/<name>.md`` (directory URLs)."""
    return site / "index.html" if page.stem == "index" else site / page.stem / "index.html"


def page_text(built: Path) -> str:
    """What a reader sees on a built page: tags stripped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", built.read_text(encoding="utf-8")))


def squash(text: str) -> str:
    return " ".join(text.split())


def referenced_examples(page: Path) -> list[str]:
    return sorted(set(EXAMPLE_REF.findall(page.read_text(encoding="utf-8"))))


PAGES_WITH_EXAMPLES = [p for p in PAGES if referenced_examples(p)]


@pytest.mark.slow
def test_mkdocs_builds_strict(site: Path) -> None:
    for page in PAGES:
        assert built_page(site, page).exists(), f"{page.name} was not built"


def test_no_built_page_shows_an_include_line(site: Path) -> None:
    shown = {
        str(path.relative_to(site)): match.group(0)
        for path in sorted(site.rglob("*.html"))
        if (match := INCLUDE_LINE.search(page_text(path)))
    }
    assert not shown, (
        f"pages show a snippet include line instead of the code: {shown}. Use the block form "
        '(--8<--, the path, --8<--) in docs/*.md: ruff format rewrites --8<-- "path" inside a '
        "python fence."
    )


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=[p.stem for p in PAGES_WITH_EXAMPLES])
def test_page_shows_the_examples_it_references(site: Path, page: Path) -> None:
    text = squash(page_text(built_page(site, page)))
    for name in referenced_examples(page):
        code = (DOCS / "examples" / name).read_text(encoding="utf-8")
        missing = [line.strip() for line in code.splitlines() if squash(line) not in text]
        assert not missing, (
            f"{page.name} names docs/examples/{name} but does not show its lines {missing[:3]} "
            f"(and {max(0, len(missing) - 3)} more)"
        )
        assert squash(code) in text, f"{page.name} shows docs/examples/{name} only in part"


#: An example shown in a page: the line naming the file, then its code in a fence, exactly as
#: the file holds it (GitHub and editors show pages as written, with no includes).
SHOWN = re.compile(r"^`docs/examples/(\w+\.(?:py|yaml))`:\n\n```(\w+)\n(.*?)^```$", re.M | re.S)
#: The include block that pages used before, inside a fence.
INCLUDE_BLOCK = re.compile(
    r"^```(\w+)\n-+8<-+\ndocs/examples/(\w+\.(?:py|yaml))\n-+8<-+\n```$", re.M
)


def sync_page(text: str) -> str:
    """``text`` with every shown example (or include block) holding its file's current code."""

    def shown(name: str, language: str) -> str:
        code = (DOCS / "examples" / name).read_text(encoding="utf-8")
        return f"`docs/examples/{name}`:\n\n```{language}\n{code}```"

    text = INCLUDE_BLOCK.sub(lambda m: shown(m.group(2), m.group(1)), text)
    return SHOWN.sub(lambda m: shown(m.group(1), m.group(2)), text)


def test_pages_show_their_examples_as_written_and_current() -> None:
    """Every example a page shows is in the page itself, and equals the file CI runs.

    Fix a failure with ``python tests/test_docs.py sync`` (it rewrites the pages' copies)."""
    stale = [
        page.name for page in PAGES if sync_page(page.read_text("utf-8")) != page.read_text("utf-8")
    ]
    assert stale == [], f"run `python tests/test_docs.py sync`: stale examples in {stale}"
    includes = [page.name for page in PAGES if INCLUDE_LINE.search(page.read_text("utf-8"))]
    assert includes == [], f"pages that include code instead of showing it: {includes}"


@pytest.mark.slow
def test_the_correctness_page_shows_what_the_replica_check_prints() -> None:
    """The report text on the page is what ``docs/examples/replica_check.py`` prints: every
    line without figures as is, and the same lines in the same order."""
    page = (DOCS / "correctness.md").read_text(encoding="utf-8")
    shown = page.split("`print(report)` shows", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    out = run_fresh(f"exec(open({str(DOCS / 'examples' / 'replica_check.py')!r}).read())").stdout
    printed = out.split("SAME: 1 and 4 replicas", 1)[0].strip().splitlines()
    wanted = shown.strip().splitlines()
    assert len(printed) == len(wanted), out
    for got, want in zip(printed, wanted, strict=True):
        if not re.search(r"\d\.\d", want):
            assert got == want
        else:  # figures may differ in their last digits on another CPU
            assert re.sub(r"[\d.e+-]+", "#", got) == re.sub(r"[\d.e+-]+", "#", want)


def test_every_example_is_shown_on_a_page() -> None:
    shown = {name for page in PAGES for name in referenced_examples(page)}
    assert {p.name for p in EXAMPLES} <= shown


def test_index_shows_the_readme_snippet() -> None:
    """docs/index.md repeats README's first snippet; the README test runs that one."""
    assert python_blocks(DOCS / "index.md")[0] == python_blocks(ROOT / "README.md")[0]


# ----------------------------------------------------------------------------- docstrings


def package_modules() -> list[str]:
    """tfplace and every submodule, by name, without importing them."""
    found = pkgutil.walk_packages(tfplace.__path__, prefix="tfplace.")
    return ["tfplace", *sorted(m.name for m in found)]


DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
#: A skipped example must say why, on its own lines or the line before it, naming one of these.
SKIP_REASONS = ("GPU", "TPU", "cluster", "worker", "hardware", "machine")


def doctests(module_name: str) -> Iterator[doctest.DocTest]:
    module = importlib.import_module(module_name)
    for test in doctest.DocTestFinder().find(module, module_name, extraglobs={"tfplace": tfplace}):
        if test.examples:
            yield test


@pytest.mark.slow
@pytest.mark.parametrize("module_name", package_modules())
def test_docstring_examples_run(module_name: str) -> None:
    """Every docstring example runs in this process (TensorFlow loaded as the suite has it).

    Examples may use the name ``tfplace`` without importing it. ``# doctest: +SKIP`` is only
    for examples whose output depends on the hardware or that need a cluster; the reason is
    written next to it (``test_skipped_docstring_examples_say_why``).
    """
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    report: list[str] = []
    for test in doctests(module_name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def _skip_reason(test: doctest.DocTest, example: doctest.Example) -> str:
    """The text that may say why ``example`` is skipped: the example itself, and the lines
    above it back to the ``Example:`` heading or the end of the last example that runs."""
    lines = (test.docstring or "").splitlines()
    start = 0
    for i in range(example.lineno - 1, -1, -1):
        if re.match(r"\s*Examples?:\s*$", lines[i]):
            start = i
            break
    for other in test.examples:
        if other.lineno < example.lineno and not other.options.get(doctest.SKIP):
            end = other.lineno + other.source.count("\n") + other.want.count("\n")
            start = max(start, end)
    return "\n".join(lines[start : example.lineno]) + example.source.replace("doctest: +SKIP", "")


@pytest.mark.parametrize("module_name", package_modules())
def test_skipped_docstring_examples_say_why(module_name: str) -> None:
    unexplained = [
        f"{test.name}: {example.source.strip()}"
        for test in doctests(module_name)
        for example in test.examples
        if example.options.get(doctest.SKIP)
        and not any(word.lower() in _skip_reason(test, example).lower() for word in SKIP_REASONS)
    ]
    assert not unexplained, (
        "skipped docstring examples must depend on hardware or a cluster and say so in a "
        f"comment (naming one of {SKIP_REASONS}); make the others run: {unexplained}"
    )


# ----------------------------------------------------------------------------- README


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(encoding="utf-8"), re.M | re.S)


README_BLOCKS = python_blocks(ROOT / "README.md")


def test_readme_has_python_snippets() -> None:
    assert len(README_BLOCKS) >= 4


@pytest.mark.parametrize(
    "block", README_BLOCKS, ids=[f"block{i}" for i in range(len(README_BLOCKS))]
)
@pytest.mark.slow
def test_readme_snippet_runs_as_written(block: str) -> None:
    """Each ```python block of README.md runs on its own, as written, in a fresh process.

    The rule: no block relies on another (a reader copies one at a time), so each imports
    what it uses and makes its own data; nothing is added to a block before it runs. The
    snippets must run on any machine: CPU-only, one GPU, several GPUs.
    """
    run_fresh(block, timeout=300)


def test_readme_commands_are_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert len(blocks) >= 2
    install_and_run, install_and_test = blocks[0].strip(), blocks[1].strip()
    assert "python -m tfplace" in install_and_run
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_test in ci


# ----------------------------------------------------------------------------- troubleshooting


def _test_names() -> set[str]:
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def test_every_test_named_in_troubleshooting_exists() -> None:
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r'^\| <span id="[a-i]\d+">', line)]
    assert len(rows) >= 20
    known = _test_names()
    for row in rows:
        named = re.findall(r"`(test_\w+)`", row.rsplit("|", 2)[-2])
        assert named, f"row names no test: {row[:60]}"
        missing = [n for n in named if n not in known]
        assert not missing, f"{row[:8]} names missing tests {missing}"


if __name__ == "__main__" and sys.argv[1:] == ["sync"]:
    for page in PAGES:
        before = page.read_text(encoding="utf-8")
        after = sync_page(before)
        if after != before:
            page.write_text(after, encoding="utf-8")
            print(f"synced {page.relative_to(ROOT)}")
