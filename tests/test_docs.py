"""The documentation stays true of the repository: links resolve, the README stays short, the options page
lists every config field with its default, the README's demo table is the committed run's, and the README's
own-loop example runs as written. All fast (no training)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _relative_links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold commands, not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_link_finder_sees_links_and_skips_urls_and_code():
    text = "[a](docs/x.md) ![b](img.png#frag) [c](https://x.org/y) [d](#anchor)\n```\n[e](no.md)\n```\n"
    assert _relative_links(text) == ["docs/x.md", "img.png#frag"]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(page):
    missing = [t for t in _relative_links(page.read_text(encoding="utf-8"))
               if not (page.parent / t.split("#", 1)[0]).exists()]
    assert missing == [], f"{page.relative_to(ROOT)}: links to missing files: {missing}"


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 260, f"README.md has {lines} lines; reference material belongs in docs/ (limit 260)"


def test_options_page_lists_every_field_with_its_default():
    from alr_fast.config import Config

    gen = _script("gen_options")
    page = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_0-9]+)` \| [^|]* \| `([^`]*)` \|", page, flags=re.M))
    want = {}
    for section in dataclasses.fields(Config):
        if section.default_factory is dataclasses.MISSING:
            continue
        for f in dataclasses.fields(section.default_factory):
            want[f"{section.name}.{f.name}"] = gen.default_text(f)
    assert sorted(set(want) - set(rows)) == [], "fields missing from docs/options.md: run python scripts/gen_options.py"
    assert sorted(set(rows) - set(want)) == [], "docs/options.md lists fields that no longer exist: regenerate it"
    stale = {k: (rows[k], v) for k, v in want.items() if rows[k] != v}
    assert stale == {}, f"docs/options.md has stale defaults (page, code): {stale}; regenerate it"


def test_readme_demo_table_is_the_committed_run():
    gen = _script("gen_demo_table")
    summary = json.loads((ROOT / "benchmarks" / "results" / "demo" / "summary.json").read_text())
    assert gen.readme_rows((ROOT / "README.md").read_text(encoding="utf-8")) == gen.rows(summary), (
        "README's demo table differs from benchmarks/results/demo/summary.json: run python scripts/gen_demo_table.py")


def test_readme_python_examples_run_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)  # the examples write relative paths (runs/...)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
