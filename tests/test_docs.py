"""README.md, CONTRIBUTING.md and docs/*.md: every relative link points to a file or folder."""

import re
from pathlib import Path

from .conftest import REPO

# [text](target) and ![alt](target), with an optional "title"; the text may run over lines
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [id]: target, a reference definition
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1\s*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
EXTERNAL = ("http://", "https://", "mailto:")


def doc_files() -> list[Path]:
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]


def link_targets(text: str) -> list[str]:
    """Every link target in a Markdown text, leaving out code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    return INLINE.findall(text) + REFERENCE.findall(text)


def broken_links(path: Path) -> list[str]:
    """'file: target' for each relative link of the Markdown file `path` whose target, without its
    #fragment and taken from the folder of `path`, is neither a file nor a folder."""
    bad = []
    for target in link_targets(path.read_text()):
        if target.lower().startswith(EXTERNAL) or target.startswith("#"):
            continue
        local = target.split("#", 1)[0]
        if not (path.parent / local).exists():
            bad.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {target}")
    return bad


def test_the_documents_exist():
    missing = [str(p.relative_to(REPO)) for p in doc_files() if not p.is_file()]
    assert missing == [], f"missing: {missing}"
    assert len(doc_files()) > 2, "docs/ holds no .md file"


def test_every_relative_link_resolves():
    bad = [line for path in doc_files() for line in broken_links(path)]
    assert bad == [], "broken links (not found from the linking file's folder):\n" + "\n".join(bad)


def test_the_link_check_fails_on_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    (tmp_path / "fig.png").write_text("x")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "[ok](here.md) [ok too](here.md#a-part) ![figure](../fig.png) [folder](../docs/)\n"
        "[web](https://example.org/x) [mail](mailto:a@b.c) [anchor](#section)\n"
        "`[not a link](nowhere.md)`\n```\n[nor this](nowhere.md)\n```\n"
        "[gone](missing.md) ![gone too](../missing.png#x) [two\nlines](../nowhere/)\n"
        "[ref]: absent.md\n")
    assert broken_links(page) == [f"{page}: missing.md", f"{page}: ../missing.png#x",
                                  f"{page}: ../nowhere/", f"{page}: absent.md"]
