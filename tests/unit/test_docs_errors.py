"""README's "closed set" of error codes is the set of codes costproxy raises."""

from __future__ import annotations

import re
from pathlib import Path

from costproxy import errors

README = Path(__file__).resolve().parents[2] / "README.md"


def _raised_codes() -> set[str]:
    found: set[str] = set()
    pending: list[type[errors.ProxyError]] = [errors.ProxyError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls not in (errors.ProxyError, errors.CallerError, errors.PolicyError, errors.ProviderError):
            found.add(cls.code)  # the four bases are never raised themselves
    return found


def test_the_readme_lists_every_error_code_and_no_other() -> None:
    text = README.read_text()
    start = text.index("with a closed set of codes:")
    paragraph = text[start:text.index("\n\n", start)]
    listed = set(re.findall(r"`([a-z_]+)`", paragraph)) - {"x-should-retry", "retry-after"}
    assert listed == _raised_codes()
