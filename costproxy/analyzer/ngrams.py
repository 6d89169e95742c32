"""Hashed word n-grams of a prompt's query: the sparse input of the text quality model.

``hashed_ngrams(user)`` reads the query of the last user message (its last paragraph with words
in it, at most ``tasks._QUERY_TAIL`` characters, the same text the difficulty features read),
splits it into lower-cased ASCII words, and returns the sorted, distinct bucket indices of its
word unigrams and bigrams, hashed with CRC-32 into ``NGRAM_BUCKETS`` buckets.  CRC-32 is stable
across processes and platforms (Python's ``hash`` is salted per process), so a model fitted by
``costproxy calibrate`` reads the same buckets in the proxy.  ``NGRAM_SCHEME`` names the
recipe; a quality file written with another recipe is refused, never misread.

Cost: one C-speed pass to split the words, one ``crc32`` per word, one multiply-xor per pair;
bounded by the query window, so it does not grow with the prompt.
"""

from __future__ import annotations

from itertools import repeat
from operator import and_, mul, rshift, xor
from zlib import crc32

from costproxy.analyzer.tasks import _query, _words

NGRAM_BITS = 12
NGRAM_BUCKETS = 1 << NGRAM_BITS
NGRAM_SCHEME = f"crc32 word 1-2 grams of the query, {NGRAM_BUCKETS} buckets, v1"
_MASK = NGRAM_BUCKETS - 1
_PAIR = 0x9E3779B1  # odd multiplier that spreads the first word's hash before the xor


def hashed_ngrams(user: str) -> tuple[int, ...]:
    """Sorted distinct bucket indices of the word 1- and 2-grams of ``user``'s query."""
    hashes = list(map(crc32, _words(_query(user))))
    if not hashes:
        return ()
    # map() chains keep the loops in C.  A bigram's bucket: bits 16.. of (first · odd constant)
    # xor (second << 16), so both words reach the kept bits.
    buckets = set(map(and_, hashes, repeat(_MASK)))
    spread = map(xor, map(mul, hashes, repeat(_PAIR)), map(mul, hashes[1:], repeat(1 << 16)))
    buckets.update(map(and_, map(rshift, spread, repeat(16)), repeat(_MASK)))
    return tuple(sorted(buckets))
