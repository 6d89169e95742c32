"""Task type and difficulty of a chat request, from the text alone (sans-IO, microseconds).

The task is one of a closed set (``TASK_TYPES``).  Detection is a weighted vote of cheap, precompiled
features, computed on a bounded window of the text so that a 100k-token prompt costs no more than a
1k-token one:

- the *instruction zone*: the first and last ``_ZONE`` characters of the last user message and the
  start of the system prompt — where people write what they want ("Translate…", "…in JSON");
- keywords: every distinct word of the zone is looked up once in ``_KEYWORDS`` (word → task
  weights); repeating a word (few-shot examples) does not add weight;
- a handful of phrase and structure patterns (``_PATTERNS``): "write a … function", code fences,
  arithmetic, multiple-choice options, a cloze blank ``_``, a question mark at the end.

The highest score wins; under ``_MIN_SCORE`` the request is ``general_chat``.  A cloze blank with
answer options ("… because _ was hungry. A) Tom B) Ann") is commonsense *reasoning*; a question with
options and no blank is *question answering*.

Difficulty in [0, 1] is a documented linear score, clamped, over features of the *query* — the last
paragraph of the last user message (in few-shot prompts the examples come first and the real
question last): a per-task base, the query's length (log-scaled), its share of long words
(technical vocabulary), reasoning and negation cues, numbers, the number of parts or constraints,
and the size of the whole input.  It is a ranking signal: calibration (``costproxy calibrate``)
turns it into per-task difficulty buckets, so only its order within a task matters.

``query_features`` gives the same kind of signals, unweighted, as a vector (``FEATURE_NAMES``, each
in [0, 1]: length, long words, cues, negations, numbers, parts, input size, answer options and their
length, numbers in the options, few-shot examples before the query, a cloze blank, a question mark,
code, and the question word).  Calibrated quality profiles may hold per-model, per-task logistic
predictors over it (``costproxy.routing.quality``), fitted on an evaluation set's train split.
"""

from __future__ import annotations

import math
import re

from costproxy.records import frozen

TASK_TYPES = (
    "code_generation",
    "math",
    "reasoning",
    "summarization",
    "translation",
    "extraction",
    "classification",
    "question_answering",
    "creative_writing",
    "general_chat",
)
_INDEX = {task: i for i, task in enumerate(TASK_TYPES)}

_ZONE = 700  # characters of instruction zone at each end of the last user message
_SYSTEM_ZONE = 400
_QUERY_TAIL = 1_000  # the query is looked for in the last characters only
_MIN_SCORE = 1.5


def _table(task: str, words: str) -> dict[bytes, tuple[int, float]]:
    """``"word:weight word:weight"`` → {word: (task index, weight)}."""
    result: dict[bytes, tuple[int, float]] = {}
    for item in words.split():
        word, weight = item.rsplit(":", 1)
        result[word.encode()] = (_INDEX[task], float(weight))
    return result


_KEYWORD_TABLES = (
    _table("code_generation", """code:2 coding:2 function:1.5 python:2.5 javascript:2.5 typescript:2.5
        java:2 golang:2 sql:2.5 regex:2 script:1.5 implement:1.5 refactor:3 debug:2.5 bug:2 compile:2
        compiler:2 algorithm:1.5 api:1 program:1.5 programming:2 unittest:2 pytest:2 html:2 css:2
        bash:2 dockerfile:2 snippet:2 syntax:1.5 array:1.5 recursion:2 recursive:1.5 exception:1.5
        traceback:3 endpoint:1.5 database:1 c++:2.5 c#:2.5 rust:1 kotlin:2 swift:1 method:0.5
        class:0.5 string:0.5 variable:1 loop:1 stacktrace:3 segfault:3 npm:2 pip:1.5 django:2 react:2"""),
    _table("math", """calculate:2 compute:1.5 solve:2 equation:3 equations:3 integral:3 derivative:3
        probability:2.5 sum:1 theorem:3 proof:1.5 prove:1.5 algebra:3 geometry:3 triangle:2 area:1
        perimeter:1.5 radius:2 polynomial:3 matrix:2 fraction:2 percent:1.5 percentage:1.5 ratio:1.5
        median:1.5 factorial:2 divisible:2 arithmetic:3 math:3 mathematics:3 simplify:1.5 integer:1
        integers:1 prime:1.5 modulo:2 logarithm:3 sqrt:2 cube:1 square:1 digits:1 remainder:2"""),
    _table("reasoning", """why:1 explain:0.5 reason:1.5 reasoning:2 logic:2.5 logical:2.5 puzzle:3
        riddle:3 deduce:3 infer:2 inference:1.5 conclude:2 conclusion:1.5 implies:2 therefore:1
        assumption:1.5 argument:1.5 fallacy:3 because:0.5 consequence:1 analyze:1 analyse:1
        compare:1 tradeoffs:1.5 trade-offs:1.5 pros:1 cons:1 strategy:1 plan:0.5 decide:1 dilemma:2
        hypothesis:1 justify:1.5 syllogism:3 premise:2 premises:2 contradiction:1.5"""),
    _table("summarization", """summarize:4 summarise:4 summary:3.5 summarizing:4 tldr:4 tl:1
        condense:3 recap:3 gist:3 abstract:1 outline:1 shorten:2 briefly:1 overview:1.5 synopsis:3
        digest:1.5 highlights:1.5 takeaways:2.5"""),
    _table("translation", """translate:4 translation:4 translated:3 translating:4 french:1.5
        spanish:1.5 german:1.5 chinese:1.5 japanese:1.5 english:1 italian:1.5 portuguese:1.5
        russian:1.5 korean:1.5 arabic:1.5 hindi:1.5 dutch:1.5 polish:1 turkish:1.5 swedish:1.5
        mandarin:1.5 localize:2 idiomatic:1"""),
    _table("extraction", """extract:4 extraction:3 parse:1.5 entities:2.5 entity:2 fields:1.5
        names:1 dates:1 addresses:1 emails:1 invoice:2 structured:1.5 json:1.5 csv:1 mentioned:1.5
        identify:0.5 pull:0.5 retrieve:0.5 keys:0.5 attributes:1.5 ner:3 schema:1 values:0.5"""),
    _table("classification", """classify:4 classification:3.5 categorize:4 categorise:4 category:2.5
        categories:2.5 label:2.5 labels:2 sentiment:4 positive:1 negative:1 neutral:1.5 spam:2.5
        toxic:2 toxicity:2 intent:2 topic:1 tag:1.5 belongs:1.5 whether:0.5 rate:0.5 detect:0.5"""),
    _table("question_answering", """what:1 who:1.5 when:1 where:1.5 which:1 how:0.5 question:1
        answer:1 capital:1 define:1.5 definition:1.5 meaning:1 fact:1 choice:1 correct:1 true:0.5
        false:0.5 tell:0.5 does:0.5 year:0.5 invented:1.5 discovered:1.5 history:1 explain:1.5
        describe:1 difference:1 differences:1"""),
    _table("creative_writing", """story:3 stories:3 poem:4 poetry:4 haiku:4 song:3 lyrics:3.5
        limerick:4 sonnet:4 fiction:3 character:1.5 characters:1.5 plot:2 narrative:2 creative:2.5
        imagine:1.5 fantasy:2 tale:2.5 essay:2 blog:2 slogan:2.5 tagline:2.5 rhyme:3 verse:2
        screenplay:3 dialogue:1.5 novel:2 chapter:1 fairy:2 villain:2 hero:1.5 metaphor:1.5
        rewrite:2 rephrase:2 paraphrase:2 proofread:2 formal:1 tone:1 draft:2 email:1 letter:2
        ideas:1.5 brainstorm:2.5 fictional:2 speech:1.5 toast:1.5 wedding:1"""),
    _table("general_chat", """hi:2 hello:2 hey:2 thanks:2 thank:1.5 chat:1 joke:2 advice:1
        recommend:1 opinion:1.5 feel:1 favorite:1.5 favourite:1.5 bored:2 lonely:2 weekend:1"""),
)
_KEYWORDS: dict[bytes, tuple[tuple[int, float], ...]] = {}
for _t in _KEYWORD_TABLES:
    for _w, _hit in _t.items():
        _KEYWORDS[_w] = (*_KEYWORDS.get(_w, ()), _hit)
_KEYWORD_WORDS = frozenset(_KEYWORDS)

_LANGUAGE_NAMES = (
    "english french spanish german chinese japanese italian portuguese russian korean arabic hindi dutch "
    "turkish swedish mandarin polish"
).split()
_LANGUAGES = frozenset(w.encode() for w in _LANGUAGE_NAMES)


def _triggers(words: str) -> frozenset[bytes]:
    return frozenset(w.encode() for w in words.split())


# Phrase and structure features: (trigger words, pattern, task, weight).  A pattern runs only when
# one of its trigger words occurs in the zone (``None``: always), because a leading-``\\b``
# alternation costs tens of microseconds per kilobyte in ``re``.
_PATTERNS: tuple[tuple[frozenset[bytes] | None, re.Pattern[str], str, float], ...] = (
    (_triggers("write"), re.compile(r"\bwrite (?:a|an|the|me a|me an|some)? ?(?:[\w+#-]+ ){0,3}"
     r"(?:function|program|script|class|method|query|regex|module|test)"), "code_generation", 4.0),
    (_LANGUAGES, re.compile(rf"\b(?:translate|into|to|in) (?:{'|'.join(_LANGUAGE_NAMES)})\b"),
     "translation", 2.0),
    (_triggers("points sentences sentence bullet tl"), re.compile(
        r"\b(?:key points|main points|in (?:\d+|one|two|three|a few) (?:sentences?|bullet)|tl;dr)"),
     "summarization", 2.0),
    (_triggers("all json pull"), re.compile(
        r"\b(?:list all|find all|pull out|return (?:a |the )?json|as json|in json)"), "extraction", 2.0),
    (_triggers("step think follows"), re.compile(
        r"\bstep[- ]by[- ]step\b|\bthink (?:carefully|it through)\b|\bwhat follows\b"), "reasoning", 2.0),
    (_triggers("story poem song tale essay haiku limerick"), re.compile(
        r"\b(?:write|tell|compose) (?:me )?(?:a|an) (?:short |funny |sad )?"
        r"(?:story|poem|song|tale|essay|haiku|limerick)"), "creative_writing", 3.0),
    (None, re.compile(r"\\(?:frac|int|sum|sqrt)\b|\$[^$\n]{1,80}\$"), "math", 2.0),
)
_CODE_MARKS = ("```", "def ", "#include", "public static", "console.log", "=> {", "import ", "};", "self.")
_ARITHMETIC = re.compile(r"\d\s*[-+*/^×÷=<>]\s*\(?\d")
_OPTIONS = re.compile(r"(?m)^\s*\(?[a-e][).:] +\S")  # multiple-choice answer options
_FORMAT_LINES = ("answer:", "answer with", "print only", "respond with", "reply with", "output only")
_BLANKS = (" _ ", " _.", " _,", " _'", "___", "\n_ ")  # a cloze blank
_CLASSIFY_PHRASES = (
    "one of the following categories", "one of the following labels", "one of the following classes",
    "positive or negative", "positive, negative", "is this spam", "is this email spam", "is this toxic",
    "is the following spam", "is the following toxic",
)
_MATH_COUNT = ("how many", "how much")
_DIGIT = re.compile(r"\d")
_GREETING = ("hi", "hello", "hey", "good morning", "good evening", "how are you")
_SHORT_ANSWER = (
    "single letter", "single word", "single choice", "single number", "one word", "without explanation",
    "only the letter", "only the number", "only the answer", "yes or no", "true or false",
    "just the answer", "just the letter", "just the number",
)
# ASCII letters (lower-cased) and + # ' stay, everything else splits words.
_WORD_BYTES = bytes(
    c + 32 if 65 <= c <= 90 else c if (97 <= c <= 122 or c in b"+#'") else 32 for c in range(256)
)


def _words(text: str) -> list[bytes]:
    """ASCII words, lower-cased, as bytes (one C-speed pass; no per-word decoding)."""
    return text.encode("utf-8", "ignore").translate(_WORD_BYTES).split()


# --- difficulty ---------------------------------------------------------------------------------
_BASE = {
    "code_generation": 0.45, "math": 0.5, "reasoning": 0.45, "summarization": 0.25,
    "translation": 0.25, "extraction": 0.25, "classification": 0.15, "question_answering": 0.3,
    "creative_writing": 0.3, "general_chat": 0.1,
}
_HARD_CUES = _triggers(
    "why explain prove derive justify analyze analyse compare optimal optimize efficient complexity "
    "tradeoff tradeoffs edge constraints concurrency concurrent thread threads distributed scalable "
    "proof multi best most likely cause causes effect effects predict evidence hypothesis relationship "
    "recursive recursion dynamic nested"
)
_NEGATIONS = _triggers("not except least never false incorrect cannot unlikely neither nor")
_CONSTRAINTS = _triggers("must should ensure without only exactly least most within each every all")
# Digits stay, everything else splits: one C pass counts the numbers of a text.
_DIGIT_BYTES = bytes(c if 48 <= c <= 57 else 32 for c in range(256))


@frozen
class TaskEstimate:
    task_type: str
    difficulty: float
    confidence: float  # margin of the winner over the runner-up, in [0, 1]
    short_answer: bool  # the prompt asks for a letter, a word, yes/no
    features: tuple[float, ...] = ()  # FEATURE_NAMES, for the quality predictors


def _zone(text: str, size: int) -> str:
    return text if len(text) <= 2 * size else text[:size] + "\n" + text[-size:]


def _add_keywords(scores: list[float], words: set[bytes], factor: float) -> None:
    # the intersection runs in C: most of a prompt's words are no keyword of any task
    for word in words.intersection(_KEYWORD_WORDS):
        for index, weight in _KEYWORDS[word]:
            scores[index] += factor * weight


def _add_structure(scores: list[float], zone: str, words: set[bytes]) -> None:
    for triggers, pattern, task, weight in _PATTERNS:
        if (triggers is None or not triggers.isdisjoint(words)) and pattern.search(zone):
            scores[_INDEX[task]] += weight
    if any(mark in zone for mark in _CODE_MARKS):
        scores[_INDEX["code_generation"]] += 3.0
    if any(op in zone for op in "+*/=^×÷<>") and _ARITHMETIC.search(zone):
        scores[_INDEX["math"]] += 2.5
    options = _OPTIONS.search(zone) is not None
    # A cloze blank (with or without options) asks for commonsense inference.
    if "_" in zone and any(blank in zone for blank in _BLANKS):
        scores[_INDEX["reasoning"]] += 5.0 + (2.5 if options else 0.0)
    elif options:
        scores[_INDEX["question_answering"]] += 2.5
    if any(phrase in zone for phrase in _CLASSIFY_PHRASES):
        scores[_INDEX["classification"]] += 2.5
    if any(phrase in zone for phrase in _MATH_COUNT) and _DIGIT.search(zone):
        scores[_INDEX["math"]] += 3.0  # a word problem
    if "?" in zone[-60:]:
        scores[_INDEX["question_answering"]] += 1.5
    if zone.lstrip().startswith(_GREETING) and len(zone) < 200:
        scores[_INDEX["general_chat"]] += 2.5


def _score(zone: str, system: str) -> list[float]:
    scores = [0.0] * len(TASK_TYPES)
    words = set(_words(zone))
    _add_keywords(scores, words, 1.0)
    if system:
        _add_keywords(scores, set(_words(system)), 0.5)
    _add_structure(scores, zone, words)
    return scores


def _pick(scores: list[float]) -> tuple[str, float]:
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    best, second = scores[ranked[0]], scores[ranked[1]]
    if best < _MIN_SCORE:
        return "general_chat", 0.0
    return TASK_TYPES[ranked[0]], min(1.0, (best - second) / best)


def _query(text: str) -> str:
    """The last paragraph with some words in it: the real question of a few-shot prompt."""
    tail = text[-_QUERY_TAIL:].rstrip()
    cut = tail.rfind("\n\n")
    while cut > 0 and len(tail) - cut < 40:
        cut = tail.rfind("\n\n", 0, cut)
    return tail[cut + 2:] if cut > 0 else tail


def _question(query: str) -> str:
    """The query without answer options and answer-format lines ("A) …", "Answer:", "Print only …")."""
    if "\n" not in query:
        return query
    kept = []
    for line in query.split("\n"):
        low = line.lstrip().lower()
        if _OPTIONS.match(low) or low.startswith(_FORMAT_LINES) or any(p in low for p in _SHORT_ANSWER):
            continue
        kept.append(line)
    return "\n".join(kept)


# Query features the quality predictors read (``quality.QualityProfiles.estimate``), each in [0, 1].
FEATURE_NAMES = (
    "words", "long_words", "hard_cues", "negations", "numbers", "parts", "input_size",
    "options", "option_words", "option_numbers", "few_shot", "cloze_blank", "question_mark", "code",
    "which", "what", "how", "why",
)
_QUESTION_WORDS = tuple(word.encode() for word in FEATURE_NAMES[-4:])


def query_features(user: str, input_tokens: int) -> tuple[float, ...]:
    """``FEATURE_NAMES`` of the query (the last paragraph of ``user``): cheap surface features."""
    query = _query(user)
    question = _question(query)
    return _features(user, query, question, _words(question), input_tokens)


def _features(user: str, query: str, question: str, words: list[bytes], input_tokens: int) -> tuple[float, ...]:
    n_words = len(words)
    options = [line for line in query.split("\n") if _OPTIONS.match(line.lower())]
    option_words = sum(len(line.split()) - 1 for line in options) / len(options) if options else 0.0
    first = set(words[:12])
    return (
        min(1.0, math.log1p(n_words) / math.log1p(400)),
        min(1.0, sum(map((9).__le__, map(len, words))) / n_words / 0.25) if n_words else 0.0,
        min(1.0, sum(map(_HARD_CUES.__contains__, words)) / 3),
        min(1.0, sum(map(_NEGATIONS.__contains__, words)) / 2),
        min(1.0, len(question.encode("utf-8", "ignore").translate(_DIGIT_BYTES).split()) / 3),
        min(1.0, (question.count("?") + question.count("\n- ") + question.count(";")) / 4),
        min(1.0, math.log1p(max(input_tokens, 0)) / math.log1p(64_000)),
        min(1.0, len(options) / 5),
        min(1.0, math.log1p(option_words) / math.log1p(30)),
        1.0 if any(_DIGIT.search(line) for line in options) else 0.0,
        1.0 if len(user) > len(query) + 200 else 0.0,
        1.0 if "_" in question and any(blank in question for blank in _BLANKS) else 0.0,
        1.0 if "?" in question else 0.0,
        1.0 if any(mark in query for mark in _CODE_MARKS) else 0.0,
        *(1.0 if word in first else 0.0 for word in _QUESTION_WORDS),
    )


def estimate_difficulty(task_type: str, user: str, input_tokens: int) -> float:
    """Linear, clamped difficulty score in [0, 1] (see the module docstring for the features)."""
    question = _question(_query(user))
    return _difficulty(task_type, question, _words(question), input_tokens)


def _difficulty(task_type: str, question: str, words: list[bytes], input_tokens: int) -> float:
    n_words = len(words)
    # map/sum keep these loops in C: the question may be a few hundred words.
    long_share = sum(map((9).__le__, map(len, words))) / n_words if n_words else 0.0
    cues = sum(map(_HARD_CUES.__contains__, words))
    negations = sum(map(_NEGATIONS.__contains__, words))
    constraints = sum(map(_CONSTRAINTS.__contains__, words))
    numbers = len(question.encode("utf-8", "ignore").translate(_DIGIT_BYTES).split())
    parts = question.count("?") + question.count("\n- ") + question.count("\n* ") + question.count(";")
    score = (
        _BASE.get(task_type, 0.3)
        + 0.25 * min(1.0, math.log1p(n_words) / math.log1p(400))
        + 0.10 * min(1.0, long_share / 0.25)
        + 0.10 * min(1.0, cues / 3)
        + 0.05 * min(1.0, negations / 2)
        + 0.10 * min(1.0, numbers / 3)
        + 0.05 * min(1.0, parts / 4)
        + 0.04 * min(1.0, constraints / 4)
        + 0.05 * min(1.0, math.log1p(max(input_tokens, 0)) / math.log1p(64_000))
    )
    return max(0.0, min(1.0, score - 0.2))


def detect_task(
    user: str, system: str = "", input_tokens: int = 0, task_hint: str | None = None, *, features: bool = True
) -> TaskEstimate:
    """Task type, difficulty and answer shape of a request from its user and system text.

    ``user`` is the last user message (earlier turns matter little); ``system`` the system prompt.
    Only bounded windows of both are scanned, so the cost does not grow with the prompt.  A
    ``task_hint`` naming one of ``TASK_TYPES`` replaces the detected type (confidence 1).
    ``features=False`` leaves ``features`` empty (only quality predictors read them).
    """
    zone = _zone(user, _ZONE).lower()
    if task_hint in _INDEX:
        task, confidence = str(task_hint), 1.0
    else:
        task, confidence = _pick(_score(zone, system[:_SYSTEM_ZONE].lower()))
    query = _query(user)
    question = _question(query)
    words = _words(question)  # the query is read once for both difficulty and features
    return TaskEstimate(
        task_type=task,
        difficulty=_difficulty(task, question, words, input_tokens),
        confidence=confidence,
        short_answer=any(phrase in zone for phrase in _SHORT_ANSWER),
        features=_features(user, query, question, words, input_tokens) if features else (),
    )
