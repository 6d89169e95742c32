"""The n-gram text quality model: hashing, fit, prediction, serialisation, AUC."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from costproxy.analyzer.ngrams import NGRAM_BUCKETS, NGRAM_SCHEME, hashed_ngrams
from costproxy.analyzer.profile import analyze
from costproxy.config_schema import Node
from costproxy.errors import ConfigError
from costproxy.routing.quality import QualityProfiles, parse_quality, quality_document
from costproxy.routing.text_model import TextModel, dequantize, parse_text_model, quantize
from costproxy.tools.text_fit import SparseRows, auc, fit_text_model

EASY = ["name the colour of the {} sky", "say hello to the {} team", "repeat the {} word back"]
HARD = ["prove the {} theorem about prime gaps", "derive the {} integral in closed form",
        "prove that the {} series diverges"]
TOPICS = ["blue", "green", "north", "south", "quiet", "loud", "small", "large"]


def toy_set(n: int = 240) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Prompts whose words separate what the cheap model gets right: it fails every 'prove/derive'."""
    ngrams, labels = [], []
    for i in range(n):
        hard = i % 2 == 1
        template = (HARD if hard else EASY)[i % 3]
        ngrams.append(hashed_ngrams(template.format(TOPICS[i % len(TOPICS)])))
        labels.append(0.0 if hard else 1.0)
    return ngrams, np.asarray(labels)


def test_hashing_is_stable_bounded_and_reads_the_query() -> None:
    grams = hashed_ngrams("Which planet is largest?\nA) Mars B) Jupiter")
    assert grams == tuple(sorted(set(grams))) and all(0 <= g < NGRAM_BUCKETS for g in grams)
    # 5 words + 4 option tokens (letters and names): distinct unigrams and bigrams
    assert 8 <= len(grams) <= 2 * 9
    assert hashed_ngrams("") == () and hashed_ngrams("!!! ???") == ()
    # the same text always hashes the same way (CRC-32, not the salted built-in hash)
    assert hashed_ngrams("derive the integral") == hashed_ngrams("derive the integral")
    question = "Q: prove the theorem about the gaps between consecutive primes"
    few_shot = "Q: what is 2+2?\nA: 4\n\n" * 20 + question
    assert hashed_ngrams(few_shot) == hashed_ngrams(question)
    assert analyze({"messages": [{"role": "user", "content": "prove it"}]}, 5).ngrams == hashed_ngrams("prove it")


def test_fit_separates_a_toy_set_and_predicts_through_the_profiles() -> None:
    ngrams, labels = toy_set()
    perf = np.column_stack([labels, np.ones_like(labels)])  # cheap, strong
    base = np.full(perf.shape, 0.5)
    model = fit_text_model(ngrams, perf, base, ("cheap", "strong"), l2=1e-3)
    profiles = QualityProfiles(models={}, tier_priors={"economy": 0.5}, text=model)
    predicted = np.asarray([profiles.estimate("cheap", "economy", "math", 0, (), g)[0] for g in ngrams])
    assert auc(predicted, labels) == 1.0
    assert predicted[labels == 1].min() > 0.6 > 0.4 > predicted[labels == 0].max()
    assert profiles.estimate("cheap", "economy", "math", 0, (), ngrams[0])[1] == "text"
    # strong is always right: its n-grams only push its estimate up
    assert profiles.estimate("strong", "economy", "math", 0, (), ngrams[1])[0] > 0.5
    # no weights for the model, or no n-grams: the profile's own estimate
    assert profiles.estimate("other", "economy", "math", 0, (), ngrams[0]) == (0.5, "tier")
    assert profiles.estimate("cheap", "economy", "math", 0, ()) == (0.5, "tier")


def test_unseen_words_leave_the_base_estimate_alone() -> None:
    ngrams, labels = toy_set()
    model = fit_text_model(ngrams, labels[:, None], np.full((len(labels), 1), 0.7), ("cheap",), l2=1e-3)
    unseen = hashed_ngrams("zebra quokka")
    weights = model.weights["cheap"]
    if all(abs(weights[g]) < 1e-12 for g in unseen):  # no collision with a trained bucket
        assert model.adjust("cheap", 0.7, unseen) == pytest.approx(0.7)


def test_quality_file_round_trip_keeps_the_predictions() -> None:
    ngrams, labels = toy_set()
    model = fit_text_model(ngrams, labels[:, None], np.full((len(labels), 1), 0.5), ("cheap",), l2=1e-3)
    profiles = QualityProfiles(models={}, tier_priors={"economy": 0.5}, text=model)
    text = yaml.safe_dump(quality_document(profiles))
    assert len(text) < 8_000  # compact: one int8 per bucket, base64
    again = parse_quality(yaml.safe_load(text), "q.yaml")
    assert again.text is not None
    for g in ngrams[:20]:
        before = profiles.estimate("cheap", "economy", "math", 0, (), g)[0]
        after = again.estimate("cheap", "economy", "math", 0, (), g)[0]
        assert after == pytest.approx(before, abs=0.01)


def test_quantization_round_trip() -> None:
    weights = [0.0, 1.27, -1.27, 0.5, -0.013]
    scale, text = quantize(weights)
    assert dequantize(scale, text) == pytest.approx(weights, abs=scale / 2 + 1e-12)
    assert quantize([0.0, 0.0]) == (1.0, "AAA=")


def test_bad_text_model_sections_are_named() -> None:
    good = {"scheme": NGRAM_SCHEME, "models": {"m": {"scale": 0.1, "weights": "AAA="}}}
    with pytest.raises(ConfigError, match=rf"text_model\.models\.m\.weights.*needs {NGRAM_BUCKETS}"):
        parse_text_model(Node(good, "q.yaml", "text_model"))
    with pytest.raises(ConfigError, match=r"text_model\.scheme"):
        parse_text_model(Node({**good, "scheme": "md5 v0"}, "q.yaml", "text_model"))
    bad = {"scheme": NGRAM_SCHEME, "models": {"m": {"scale": 0.1, "weights": "not base64!"}}}
    with pytest.raises(ConfigError, match="base64"):
        parse_text_model(Node(bad, "q.yaml", "text_model"))
    assert parse_text_model(Node(None, "q.yaml", "text_model")) is None
    assert TextModel(weights={}).adjust("m", 0.5, (1, 2)) is None


def test_auc() -> None:
    assert auc(np.asarray([0.1, 0.2, 0.8, 0.9]), np.asarray([0.0, 0.0, 1.0, 1.0])) == 1.0
    assert auc(np.asarray([0.9, 0.8, 0.2, 0.1]), np.asarray([0.0, 0.0, 1.0, 1.0])) == 0.0
    assert auc(np.asarray([0.5, 0.5, 0.5, 0.5]), np.asarray([0.0, 1.0, 0.0, 1.0])) == 0.5
    assert auc(np.asarray([0.3, 0.1, 0.3, 0.7]), np.asarray([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.875)
    assert auc(np.asarray([0.1, 0.2]), np.asarray([1.0, 1.0])) is None


def test_sparse_rows_have_unit_norm() -> None:
    x = SparseRows([(1, 2, 3, 4), (5,), ()])
    assert x.dot(np.ones(NGRAM_BUCKETS)) == pytest.approx([2.0, 1.0, 0.0])
    assert x.transpose_dot(np.asarray([1.0, 1.0, 1.0]))[[1, 5, 0]] == pytest.approx([0.5, 1.0, 0.0])


def test_adjust_with_one_and_many_ngrams() -> None:
    weights = tuple(1.0 if i in (5, 9) else 0.0 for i in range(NGRAM_BUCKETS))
    model = TextModel(weights={"m": weights})
    assert model.adjust("m", 0.5, (5,)) == pytest.approx(1 / (1 + np.exp(-1.0)))
    # two n-grams of weight 1, scaled by 1/sqrt(2); an unseen third only dilutes
    assert model.adjust("m", 0.5, (5, 9)) == pytest.approx(1 / (1 + np.exp(-2 / np.sqrt(2))))
    assert model.adjust("m", 0.5, (5, 9, 11)) == pytest.approx(1 / (1 + np.exp(-2 / np.sqrt(3))))
    assert model.adjust("m", 1.0, (5,)) < 1.0  # a certain base stays finite
