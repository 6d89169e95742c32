"""docs/troubleshooting.md quotes only error codes and messages costproxy really emits, and lists
every error code of costproxy/errors.py; docs/faq.md links only to pages that exist."""

from __future__ import annotations

import re

from costproxy import errors
from tests.docs_support import DOCS, ROOT, code_spans, markdown_tables

DOC = DOCS / "troubleshooting.md"


def source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "costproxy").rglob("*.py")))


def emitted_codes() -> set[str]:
    """Codes written as a class's ``code = "…"``, or as string literals on a line that sets a
    ``"code"`` of a JSON body (``"code": "a" if … else "b"``)."""
    text = source()
    lines = [line for line in text.splitlines() if '"code":' in line]
    return set(re.findall(r'\bcode\s*=\s*"([a-z_]+)"', text)) | set(re.findall(r'"([a-z_]+)"', "\n".join(lines)))


def rows(column: str) -> list[dict[str, str]]:
    found = [row for table in markdown_tables(DOC.read_text(encoding="utf-8")) for row in table if column in row]
    assert found, column
    return found


def test_every_quoted_code_is_emitted_by_the_code() -> None:
    quoted = {span for row in rows("code") for span in code_spans(row["code"])}
    assert quoted
    assert quoted - emitted_codes() == set()


def test_every_error_class_code_is_listed() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ProxyError)]
    listed = {span for row in rows("code") for span in code_spans(row["code"])}
    assert {c.code for c in classes} - listed == set()


def test_every_quoted_message_is_written_by_the_code() -> None:
    text = source()
    quoted = [span for row in rows("message (fragment)") for span in code_spans(row["message (fragment)"])]
    quoted += [span for row in rows("symptom") for span in code_spans(row["symptom"])[:1]]
    missing = [q for q in quoted if not all(part.strip() in text for part in q.split("…") if len(part.strip()) > 3)]
    assert len(quoted) >= 15
    assert missing == []


def test_doc_links_point_at_existing_pages() -> None:
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([a-z_-]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (DOCS / target).is_file(), f"{page.name} links to missing {target}"
