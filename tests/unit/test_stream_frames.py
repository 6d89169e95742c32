from __future__ import annotations

import orjson

from costproxy.pipeline.exchange import without_usage as _without_usage


def frame(data: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def test_null_usage_is_cut_exactly() -> None:
    data = {"id": "c1", "choices": [{"delta": {"content": 'tricky ,"usage":null text'}}], "usage": None}
    raw = frame(data)
    stripped = _without_usage(raw, data)
    assert orjson.loads(stripped[6:]) == {k: v for k, v in data.items() if k != "usage"}


def test_other_layouts_are_reserialised() -> None:
    data = {"usage": None, "id": "c2", "choices": []}
    assert orjson.loads(_without_usage(frame(data), data)[6:]) == {"id": "c2", "choices": []}
    with_usage = {"id": "c3", "choices": [{"delta": {"content": "x"}}], "usage": {"prompt_tokens": 1}}
    assert "usage" not in orjson.loads(_without_usage(frame(with_usage), with_usage)[6:])
