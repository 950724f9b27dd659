"""The README and docs/ as a reader meets them: they describe the software and the machines it was
measured on (no process words: issue numbers, "tried and reverted" logs), and every relative link
points at a file that exists (and at a heading of it, where the link names one)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
NAMES = [p.relative_to(REPO).as_posix() for p in DOCS]

# Words that belong to the history of the work (git), not to a manual.
PROCESS_WORDS = re.compile(
    r"\bissues? \d+|(?<![\w/&#])#\d+\b|tried and reverted|\breverted\b|\bnot kept\b|earlier session"
    r"|\bthis stop\b|\bwe first\b|\bthe issue\b|\bthis task\b", re.I)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def prose(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces -> '-'."""
    text = re.sub(r"`|\*\*|\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose(path):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def test_the_pages_are_found():
    assert {"README.md", "docs/performance.md", "docs/inference.md", "docs/differences.md",
            "docs/design.md"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_no_process_words(name):
    hits = [f"{name}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}"
            for number, line in prose(REPO / name) for match in PROCESS_WORDS.finditer(line)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("name", NAMES)
def test_relative_links_resolve(name):
    path = REPO / name
    bad = []
    for number, line in prose(path):
        for match in LINK.finditer(line):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                bad.append(f"{name}:{number}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                bad.append(f"{name}:{number}: {target} (no heading with that anchor)")
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_are_for(tmp_path):
    assert [m.group(0) for m in PROCESS_WORDS.finditer(
        "as issue 15 measured; see #30; tried and reverted; the issue's goal; Table 2 | # | 3")] == [
        "issue 15", "#30", "tried and reverted", "the issue"]
    page = tmp_path / "page.md"
    page.write_text("# Latest results per machine kind\n## As the release ran: decoding, `x`\n```\n# not a heading\n```\n")
    assert anchors(page) == {"latest-results-per-machine-kind", "as-the-release-ran-decoding-x"}
    assert [m.group(1) for m in LINK.finditer("[a](b.md#c) ![img](d.png) [e](https://x.org/f)")] == [
        "b.md#c", "d.png", "https://x.org/f"]


def test_differences_rows_are_short():
    """docs/differences.md: one short row per difference (point, release, ours, switch), details below."""
    text = (REPO / "docs/differences.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert rows[0] == "| point | release | ours (default) | switch |"
    assert len(rows) >= 46
    for row in rows[1:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]
        assert len(cells) == 4, row
        assert all(len(c.split()) <= 25 for c in cells), row
    numbers = [int(n) for n in re.findall(r"^(\d+)\. \*\*", text, re.M)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 45


def test_performance_page_is_short_and_names_its_scripts():
    text = (REPO / "docs/performance.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    for script in ("bench_aligner_inference.py", "bench_training.py", "bench_judge.py",
                   "bench_reward_labelling.py", "bench_sepo_scoring.py", "run_all.py"):
        assert f"benchmarks/{script}" in text or f"`{script}" in text, script
