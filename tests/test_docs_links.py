"""The README and docs/ link to each other: every relative link names a file that exists, and
every `#anchor` a heading of that file (GitHub's slugs), so a page moved or a heading renamed
breaks a test instead of a reader's click."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text("utf-8")
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return {_slug(m.group(1)) for m in re.finditer(r"(?m)^#{1,6} (.+)$", text)}


def _links() -> list[tuple[Path, str]]:
    found = []
    for page in PAGES:
        for target in LINK.findall(page.read_text("utf-8")):
            if not target.startswith(("http://", "https://", "mailto:")):
                found.append((page, target))
    return found


def test_pages_have_links_to_check() -> None:
    assert any(page.name == "README.md" for page, _ in _links())


@pytest.mark.parametrize(("page", "target"), _links(), ids=lambda v: str(v))
def test_every_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{page.relative_to(REPO)} links to {target}: no such file"
    if anchor and dest.suffix == ".md":
        assert anchor in _anchors(dest), (
            f"{page.relative_to(REPO)} links to {target}: {dest.name} has no heading #{anchor}"
        )
