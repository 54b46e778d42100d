"""The README and docs/ pages: every relative link reaches a file (and a heading, where it names one),
and the README stays short enough to read."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 360

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a '#' there is a shell comment, a link there is code)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text as shown (link targets and markup gone), lowercase,
    punctuation other than '-' and '_' dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a page; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(text):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def link_targets(text: str) -> list[str]:
    """The targets of the page's links and images, outside code."""
    return [m.group(1) for line in prose_lines(text) for m in LINK.finditer(CODE_SPAN.sub("", line))]


def broken_links(text: str, folder: Path) -> list[str]:
    """Each relative link of a page in `folder` that names no existing file, or a heading its page lacks."""
    bad = []
    for target in link_targets(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
            continue
        path, _, fragment = target.partition("#")
        file = (folder / path).resolve() if path else None
        if file is not None and not file.exists():
            bad.append(f"{target}: no file {path}")
            continue
        if not fragment or (file is not None and file.suffix != ".md"):
            continue
        page = text if file is None else file.read_text()
        if fragment not in anchors(page):
            bad.append(f"{target}: no heading #{fragment} in {path or 'this page'}")
    return bad


def test_every_relative_link_reaches_a_file_and_a_heading():
    bad = [f"{page.relative_to(ROOT)}: {b}" for page in PAGES for b in broken_links(page.read_text(), page.parent)]
    assert not bad, bad


def test_the_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the detail belongs in docs/"


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The reference's runtime\n\n## Repeated\n\n## Repeated\n")
    (tmp_path / "picture.png").write_bytes(b"")
    page = (
        "# Here\n\n"
        "[fine](other.md) [fine](other.md#the-references-runtime) [fine](other.md#repeated-1) [fine](#here)\n"
        "![fine](picture.png) [elsewhere](https://example.com/missing.md) `[code](nowhere.md)`\n"
        "[gone](missing.md) [no heading](other.md#not-there) [no heading here](#nowhere)\n"
        "```\n[in a code block](also-missing.md)\n```\n"
    )
    assert broken_links(page, tmp_path) == [
        "missing.md: no file missing.md",
        "other.md#not-there: no heading #not-there in other.md",
        "#nowhere: no heading #nowhere in this page",
    ]


def test_anchors_follow_githubs_rules():
    assert slug("A bundle that learns: `noscope train --update`") == "a-bundle-that-learns-noscope-train---update"
    assert slug("Train on the first 60%, answer the last 40%") == "train-on-the-first-60-answer-the-last-40"
    assert slug("`scripts/reference_speed.py`: the reference's runtimes") == "scriptsreference_speedpy-the-references-runtimes"
    assert anchors("# A\n\n```\n# not a heading\n```\n\n## A\n") == {"a", "a-1"}
