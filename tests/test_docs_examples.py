"""Every ```python block in README.md and docs/*.md runs.

The blocks of one file run in order, in one namespace (so a later block may use what an earlier one
defined), with a fresh temporary directory as the working directory (files an example writes land
there, never in the repository) and HOME pointing into it (so the demo dashboard's default feedback
store, ~/.cache/xcam-viz, is a throwaway one too). A block preceded by a line `<!-- no-test -->` is skipped: that marks
examples that cannot run unattended — ones that start a server and block (`xcam-viz serve`,
`panel serve`, `Dashboard.servable()` scripts) or only show a notebook display — and each such marker
should come with prose saying what the block does. Other fenced languages (bash, text) are never run.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.M | re.S)
SKIP = "<!-- no-test -->"


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, code, skipped) of every ```python block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip().splitlines()
        skipped = bool(before) and before[-1].strip() == SKIP
        blocks.append((line, m.group(1), skipped))
    return blocks


def test_the_docs_have_examples():
    found = {p.relative_to(ROOT).as_posix(): len(python_blocks(p)) for p in FILES}
    for name in ("README.md", "docs/api.md", "docs/methods.md"):
        assert found.get(name, 0) > 0, f"{name} should show runnable examples: {found}"


def test_block_extraction_and_skip_marker(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n\n```python\na = 1\n```\n\n<!-- no-test -->\n```python\nserve()\n```\n\n"
                  "```bash\nls\n```\n", encoding="utf-8")
    assert python_blocks(md) == [(3, "a = 1\n", False), (8, "serve()\n", True)]


@pytest.mark.parametrize("path", [p for p in FILES if python_blocks(p)],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_markdown_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": f"docs_example_{path.stem}"}
    ran = 0
    for line, code, skipped in python_blocks(path):
        if skipped:
            continue
        name = f"{path.relative_to(ROOT).as_posix()}:{line}"
        try:
            exec(compile(code, name, "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"the example at {name} failed: {type(err).__name__}: {err}") from err
        ran += 1
    assert ran > 0
    assert os.getcwd() == str(tmp_path)


ENTRY_POINTS = ["xcam_viz.explain.api:explain", "xcam_viz.evidence.analysis:evidence",
                "xcam_viz.finetune.core:finetune", "xcam_viz.feedback.store:FeedbackStore",
                "xcam_viz.feedback.slices:extend", "xcam_viz.feedback.slices:interpolate",
                "xcam_viz.dashboard.dashboard:Dashboard", "xcam_viz.concepts.dissect:dissect",
                "xcam_viz.report.build:report", "xcam_viz.models.zoo:build",
                "xcam_viz.data.nifti:load_nifti", "xcam_viz.data.dicom:load_dicom", "xcam_viz.data.medical:save_nifti"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_public_entry_points_document_their_arguments_and_run_their_example(entry, tmp_path, monkeypatch):
    import doctest
    import importlib

    module, name = entry.split(":")
    obj = getattr(importlib.import_module(module), name)
    doc = obj.__doc__ or ""
    assert "Args:" in doc and "Example:" in doc, f"{entry} needs an Args: section and an Example:"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tests = doctest.DocTestFinder().find(obj, name, globs={})
    assert sum(len(t.examples) for t in tests) > 0, f"{entry}'s Example: has no >>> lines"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, f"{entry}'s example failed (see the output above)"
