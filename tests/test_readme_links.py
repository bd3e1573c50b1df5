"""The links of the README and of docs/ lead somewhere: a heading renamed or a file moved leaves a dead
link that nothing else notices (the contents line after the README's diagram links every section, and
the README's summaries link the sections of docs/ that hold the details)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```.*?^```", re.M | re.S)  # code blocks: their '# ' lines are comments, not headings
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, every character but letters, digits, '_',
    '-' and spaces dropped (backticks, brackets, commas, slashes), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def readme_links(text: str) -> tuple[set[str], list[str], list[str]]:
    """(anchors of the headings, links to anchors, links to files in the repository) of a README.
    Links out of the repository (``../``) and to the web are not followed."""
    prose = FENCE.sub("", text)
    anchors = {github_anchor(h) for h in HEADING.findall(prose)}
    links = LINK.findall(prose)
    to_anchors = [link[1:] for link in links if link.startswith("#")]
    to_files = [link.split("#")[0] for link in links
                if not link.startswith(("#", "../", "http://", "https://", "mailto:"))]
    return anchors, to_anchors, to_files


def test_github_anchors_worked_by_hand():
    assert github_anchor("HTTP (per worker, port `INTEREST_WEB_PORT`)") == "http-per-worker-port-interest_web_port"
    assert github_anchor("Performance (measured with `make bench`)") == "performance-measured-with-make-bench"
    assert github_anchor("`POST /users/{user_id}/rerank`") == "post-usersuser_idrerank"
    assert github_anchor("Re-ranking") == "re-ranking"


def test_links_are_read_from_prose_not_from_code_blocks():
    text = ("# Top\n\n## Two words\n\n```bash\n# not a heading\necho '[x](#gone)'\n```\n"
            "[a](#two-words) [b](#top) [c](docs/x.md#part) [d](../out.md) [e](https://example.org)\n")
    assert readme_links(text) == ({"top", "two-words"}, ["two-words", "top"], ["docs/x.md"])


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def dead_links(page: Path, root: Path = ROOT) -> list[str]:
    """The links of a page that lead nowhere: to a missing file, or to a heading its page lacks.
    Paths are relative to the page; links to the web, or out of the repository (the README's
    ``../shared/CONTRACT.md``), are not followed."""
    dead, anchors = [], {}  # anchors: each target page's headings, read once
    for link in LINK.findall(FENCE.sub("", page.read_text())):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.is_relative_to(root):
            continue
        if not target.exists():
            dead.append(link)
        elif anchor and target.suffix == ".md":
            if target not in anchors:
                anchors[target] = readme_links(target.read_text())[0]
            if anchor not in anchors[target]:
                dead.append(link)
    return dead


def test_dead_links_are_found_from_the_page_that_holds_them(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Top\n\n## Two words\n\n[a](docs/x.md#part) [b](docs/x.md#gone) "
                                        "[c](#two-words) [d](#nowhere) [e](../outside.md) [f](docs/y.md)\n")
    (tmp_path / "docs" / "x.md").write_text("# X\n\n## Part\n\n[g](../README.md#top) [h](../README.md#x) "
                                            "[i](x.md#part) [j](README.md)\n")
    assert dead_links(tmp_path / "README.md", tmp_path) == ["docs/x.md#gone", "#nowhere", "docs/y.md"]
    assert dead_links(tmp_path / "docs" / "x.md", tmp_path) == ["../README.md#x", "README.md"]


def test_every_link_of_the_readme_and_of_docs_leads_to_a_heading_or_a_file():
    assert [p.name for p in PAGES] == ["README.md", "commands.md", "model.md", "operations.md", "performance.md",
                                       "worker.md"]
    _, to_anchors, _ = readme_links((ROOT / "README.md").read_text())
    assert len(to_anchors) >= 12  # the contents line alone links twelve sections
    assert {page.name: dead_links(page) for page in PAGES} == {page.name: [] for page in PAGES}
