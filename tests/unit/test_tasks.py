"""Task detection and difficulty on realistic prompts; analyze() on OpenAI bodies."""

from __future__ import annotations

import pytest

from costproxy.analyzer.profile import analyze
from costproxy.analyzer.tasks import FEATURE_NAMES, TASK_TYPES, detect_task, estimate_difficulty, query_features

CASES: list[tuple[str, str]] = [
    # code generation
    ("code_generation", "Write a python function to identify non-prime numbers."),
    ("code_generation", "Write a function to find the perimeter of a regular pentagon from the length "
                        "of its sides."),
    ("code_generation", "Can you implement a thread-safe LRU cache in Java with generics?"),
    ("code_generation", "Refactor this code so it doesn't use global state:\n```js\nlet count = 0;\n"
                        "function inc() { count++; }\n```"),
    ("code_generation", "I get this traceback when I run my script:\nTraceback (most recent call last):\n"
                        "  File \"app.py\", line 3\nKeyError: 'id'\nHow do I fix the bug?"),
    ("code_generation", "Write a SQL query that returns the top 5 customers by total order value."),
    ("code_generation", "Create a bash script that backs up /var/www to S3 every night."),
    ("code_generation", "Write unit tests with pytest for the following function:\n\ndef add(a, b):\n"
                        "    return a + b"),
    ("code_generation", "How do I reverse a linked list in C++ without recursion?"),
    ("code_generation", "Convert this Python 2 code to Python 3: print 'hello'"),
    # math
    ("math", "Solve for x: 3x + 7 = 22."),
    ("math", "What is the derivative of x^3 * sin(x)?"),
    ("math", "Compute the integral of 1/(1+x^2) from 0 to 1."),
    ("math", "A train travels 120 km in 1.5 hours. How many kilometres does it travel in 4 hours "
             "at the same speed?"),
    ("math", "What is the probability of rolling two sixes with two fair dice?"),
    ("math", "Prove that the square root of 2 is irrational."),
    ("math", "Simplify the fraction 84/126 and give the result as a percentage."),
    ("math", "Find all integers n such that n^2 - 5n + 6 = 0."),
    # reasoning
    ("reasoning", "Sarah was a much better surgeon than Maria so _ always got the harder cases.\n"
                  "A) Maria\nB) Sarah\nAnswer with a single letter."),
    ("reasoning", "The trophy doesn't fit into the brown suitcase because the _ is too large.\n"
                  "Option 1: trophy\nOption 2: suitcase"),
    ("reasoning", "All bloops are razzies and all razzies are lazzies. Are all bloops definitely lazzies? "
                  "Think step by step."),
    ("reasoning", "Here is a logic puzzle: three boxes are labelled wrongly. You may draw one fruit "
                  "from one box. Deduce the contents of every box."),
    ("reasoning", "If it rains, the match is cancelled. The match was not cancelled. What can we conclude? "
                  "Explain your reasoning."),
    ("reasoning", "Analyze the trade-offs: should a startup with 3 engineers adopt microservices? "
                  "Weigh the pros and cons and decide."),
    # summarization
    ("summarization", "Summarize the following article in three sentences:\n\n" + "The city council met on "
                      "Tuesday to discuss the new budget. " * 30),
    ("summarization", "TL;DR this thread for me please:\n" + "User A: I think we should ship. " * 20),
    ("summarization", "Give me the key points of this meeting transcript.\n\n"
                      + "Alice: the launch slips. " * 25),
    ("summarization", "Can you condense this report into a short executive summary?\n"
                      + "Revenue grew. " * 40),
    ("summarization", "Write a brief synopsis of the plot of Hamlet."),
    # translation
    ("translation", "Translate to French: 'Where is the nearest train station?'"),
    ("translation", "Please translate the following paragraph into Spanish.\n\n"
                    "Our office will be closed on Monday."),
    ("translation", "How do you say 'good luck with your exams' in Japanese?"),
    ("translation", "Traduce esto al inglés, por favor: translate 'la casa es grande' into English."),
    ("translation", "Translate this German sentence: 'Ich habe keine Zeit.'"),
    # extraction
    ("extraction", "Extract all person names and dates from this text: John met Mary on 3 May 2021 "
                   "in Paris."),
    ("extraction", "From the invoice below, pull out the vendor, total amount and due date as JSON.\n\n"
                   "ACME Corp\nTotal: $1,200\nDue: 2024-05-01"),
    ("extraction", "List all email addresses mentioned in this message: contact bob@example.com or "
                   "alice@example.org."),
    ("extraction", "Extract the named entities (people, organisations, places) from the paragraph below."),
    ("extraction", "Return the product name, price and SKU fields in JSON from this listing: "
                   "'Blue Mug, $12, SKU 4411'."),
    # classification
    ("classification", "Classify the sentiment of this review as positive, negative or neutral: "
                       "'The battery dies after two hours.'"),
    ("classification", "Is this email spam? 'Congratulations! You won a free cruise, click here.'"),
    ("classification", "Categorize the following support ticket into one of the following categories: "
                       "billing, technical, account. Ticket: 'I can't log in.'"),
    ("classification", "Label each tweet with its topic: sports, politics or tech."),
    ("classification", "What is the intent of this user utterance: 'book me a table for two tonight'? "
                       "Choose a label."),
    # question answering
    ("question_answering", "What is the capital of Australia?"),
    ("question_answering", "Who invented the telephone?"),
    ("question_answering", "When did the Berlin Wall fall?"),
    ("question_answering", "Which gas do plants absorb from the atmosphere?\nA) oxygen\nB) carbon dioxide\n"
                           "C) nitrogen\nD) helium\nAnswer:"),
    ("question_answering", "Where is the Great Barrier Reef located?"),
    ("question_answering", "What does the acronym NASA stand for?"),
    ("question_answering", "Lasers are used in surgery for\nA) making fine incisions.\n"
                           "B) disinfecting instruments.\nC) illuminating operating fields.\n"
                           "D) stitching wounds.\nPrint only a single choice from \"A\" or \"B\" or "
                           "\"C\" or \"D\" without explanation.\nAnswer:"),
    # creative writing
    ("creative_writing", "Write a short story about a robot who learns to paint."),
    ("creative_writing", "Compose a haiku about autumn rain."),
    ("creative_writing", "Write a poem in the style of Emily Dickinson about the sea."),
    ("creative_writing", "Give me a catchy slogan for an eco-friendly coffee brand."),
    ("creative_writing", "Write song lyrics for a breakup ballad with a strong chorus."),
    ("creative_writing", "Imagine a fantasy world where dragons run the post office. "
                         "Describe the main character."),
    # general chat
    ("general_chat", "hi!"),
    ("general_chat", "Hello, how are you today?"),
    ("general_chat", "Thanks, that was really helpful."),
    ("general_chat", "Tell me a joke."),
    ("general_chat", "I'm bored this weekend, any advice?"),
    ("general_chat", "ok"),
]


@pytest.mark.parametrize(("expected", "prompt"), CASES)
def test_detects_task_type(expected: str, prompt: str) -> None:
    assert detect_task(prompt).task_type == expected


def test_every_task_type_is_covered_by_the_cases() -> None:
    assert {task for task, _ in CASES} == set(TASK_TYPES)


def test_accuracy_on_cases_is_high() -> None:
    correct = sum(detect_task(prompt).task_type == task for task, prompt in CASES)
    assert correct == len(CASES)


def test_system_prompt_counts_with_less_weight() -> None:
    system = "You are a translation engine. Translate every message into German."
    assert detect_task("The weather is lovely today.", system).task_type == "translation"
    assert detect_task("Write a python function to sort a list.", system).task_type == "code_generation"


def test_few_shot_prompt_uses_the_final_question() -> None:
    shot = "Which metal is liquid at room temperature?\nA) iron\nB) mercury\nC) copper\nD) zinc\n"
    shot += "Answer:\nB\n\n"
    question = "Which planet is closest to the sun?\nA) Venus\nB) Mars\nC) Mercury\nD) Earth\nAnswer:"
    prompt = shot * 5 + question
    estimate = detect_task(prompt)
    assert estimate.task_type == "question_answering"
    assert estimate.short_answer is False


def test_short_answer_flag() -> None:
    assert detect_task("Is Paris in France? Answer yes or no.").short_answer
    assert not detect_task("Explain how a bicycle stays upright.").short_answer


def test_task_hint_overrides_detection() -> None:
    estimate = detect_task("Write a python function to sort a list.", task_hint="math")
    assert estimate.task_type == "math" and estimate.confidence == 1.0
    assert detect_task("hi", task_hint="not-a-task").task_type == "general_chat"


def test_difficulty_in_unit_interval_and_ordered() -> None:
    easy = estimate_difficulty("question_answering", "What is the capital of France?", 8)
    hard = estimate_difficulty(
        "question_answering",
        "Explain why the observed rotation curves of spiral galaxies do not follow Keplerian decline, "
        "compare the dark-matter hypothesis with modified Newtonian dynamics, and justify which "
        "explanation best fits the evidence from gravitational lensing and the cosmic microwave "
        "background; which observation is NOT consistent with MOND?",
        90,
    )
    assert 0.0 <= easy < hard <= 1.0
    assert 0.0 <= estimate_difficulty("math", "", 0) < estimate_difficulty("math", "What is 2+2?", 6)
    assert estimate_difficulty("reasoning", "why " * 10_000, 10**6) <= 1.0


def test_a_long_prompt_is_read_like_a_short_one() -> None:
    """Length alone changes no answer (bench/core_bench.py reports what detection costs)."""
    prompt = ("The quarterly report shows revenue growth in every region except APAC. " * 60)[:4_000]
    prompt += "\n\nSummarize the report above in three bullet points."
    short = detect_task(prompt, "You are a helpful assistant.", 1_000)
    long = detect_task(prompt * 50, "", 50_000)
    assert (short.task_type, long.task_type) == ("summarization", "summarization")
    assert 0.0 <= short.difficulty <= long.difficulty <= 1.0  # more to read is never easier
    assert detect_task(prompt * 50, "", 50_000) == long  # deterministic


# --- analyze() --------------------------------------------------------------------------------


def _body(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a python function that merges two sorted lists."},
        ],
    }
    body.update(extra)
    return body


def test_analyze_plain_chat() -> None:
    profile = analyze(_body(), input_tokens=30)
    assert profile.task_type == "code_generation"
    assert profile.input_tokens == 30
    assert profile.max_output_tokens is None
    assert profile.expected_output_tokens == 450
    assert profile.required_capabilities == frozenset()
    assert profile.task_source == "detected"


def test_analyze_capabilities() -> None:
    body = _body(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        stream=True,
    )
    body["messages"] = [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]},
    ]
    profile = analyze(body, input_tokens=900)
    assert profile.required_capabilities == {"tools", "json_schema", "streaming", "vision"}
    assert analyze(_body(functions=[{"name": "g"}]), 10).required_capabilities == {"tools"}
    assert analyze(_body(response_format={"type": "json_object"}), 10).required_capabilities == {"json_mode"}
    assert analyze(_body(tools=[]), 10).required_capabilities == frozenset()
    assert analyze(_body(reasoning_effort="high"), 10).required_capabilities == {"reasoning"}


def test_analyze_output_bounded_by_max_tokens() -> None:
    assert analyze(_body(max_tokens=100), 30).expected_output_tokens == 100
    # both caps sent: an upstream may honour either, so the larger one bounds the answer
    profile = analyze(_body(max_completion_tokens=50, max_tokens=4000), 30)
    assert profile.max_output_tokens == 4000 and 50 < profile.expected_output_tokens <= 4000
    assert analyze(_body(max_completion_tokens=50), 30).expected_output_tokens == 50


def test_analyze_output_heuristics() -> None:
    article = "Summarize this article: " + "x " * 50
    summary = analyze({"messages": [{"role": "user", "content": article}]}, 4_000)
    assert summary.task_type == "summarization" and summary.expected_output_tokens == 600
    short = analyze({"messages": [{"role": "user", "content": "Is 7 prime? Answer yes or no."}]}, 12)
    assert short.expected_output_tokens == 5
    german = "Translate to German: good morning"
    translation = analyze({"messages": [{"role": "user", "content": german}]}, 12)
    assert translation.expected_output_tokens == 50


def test_analyze_hint_and_odd_bodies() -> None:
    assert analyze(_body(), 30, task_hint="reasoning").task_type == "reasoning"
    assert analyze(_body(), 30, task_hint="reasoning").task_source == "hint"
    assert analyze(_body(), 30, task_hint="bogus").task_type == "code_generation"
    assert analyze({}, 0).task_type == "general_chat"
    assert analyze({"messages": "nonsense"}, 0).task_type == "general_chat"
    assert analyze({"prompt": "Translate to French: cat"}, 5).task_type == "translation"
    last_turn = {"messages": [
        {"role": "user", "content": "Write a poem about cats."},
        {"role": "assistant", "content": "Cats..."},
        {"role": "user", "content": "What is the capital of Peru?"},
    ]}
    assert analyze(last_turn, 40).task_type == "question_answering"


# --- query features for the quality predictors ---------------------------------------------------


def test_query_features_are_bounded_and_named() -> None:
    prompt = ("Which of these is NOT a mammal?\nA) whale\nB) bat\nC) shark\nD) 2 dogs\n"
              "Print only a single choice from \"A\" or \"B\" or \"C\" or \"D\" without explanation.\nAnswer:")
    features = dict(zip(FEATURE_NAMES, query_features(prompt, 60), strict=True))
    assert all(0.0 <= v <= 1.0 for v in features.values())
    assert features["options"] == pytest.approx(4 / 5)
    assert features["option_numbers"] == 1.0
    assert features["negations"] > 0 and features["which"] == 1.0 and features["question_mark"] == 1.0
    assert features["few_shot"] == 0.0 and features["cloze_blank"] == 0.0 and features["code"] == 0.0


def test_query_features_see_few_shot_examples_and_blanks() -> None:
    shots = "\n\n".join(f"Example {i}: the _ was big.\nA) box\nB) ball\nAnswer: A" for i in range(5))
    prompt = shots + "\n\nThe trophy did not fit in the suitcase because the _ was too big.\nA) trophy\nB) suitcase"
    features = dict(zip(FEATURE_NAMES, query_features(prompt, 200), strict=True))
    assert features["few_shot"] == 1.0 and features["cloze_blank"] == 1.0 and features["options"] == pytest.approx(0.4)


def test_analyze_carries_the_features() -> None:
    profile = analyze({"messages": [{"role": "user", "content": "Why is the sky blue?"}]}, 12)
    assert len(profile.features) == len(FEATURE_NAMES)
    assert profile.features[FEATURE_NAMES.index("why")] == 1.0
