"""The README's links to its own sections and to the repository's files lead somewhere: a heading
renamed or a file moved leaves a dead link that nothing else notices (the contents line after the
diagram links every section)."""
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


def test_every_readme_link_leads_to_a_heading_or_a_file():
    anchors, to_anchors, to_files = readme_links((ROOT / "README.md").read_text())
    assert len(to_anchors) >= 12  # the contents line alone links twelve sections
    assert [a for a in to_anchors if a not in anchors] == []
    assert [f for f in to_files if not (ROOT / f).exists()] == []
