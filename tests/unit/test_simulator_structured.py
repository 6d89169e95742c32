"""The simulator's structured output: a value generated from a JSON schema validates against it,
the same schema always gets the same value, and what cannot be generated is said, not faked."""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel, Field

from costproxy.tools.simulator_structured import SchemaUnsupported, sample, structured_text


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    postcode: str = Field(pattern=r"^\d{5}$")


class Person(BaseModel):
    name: str = Field(min_length=3, max_length=40)
    age: int = Field(ge=18, lt=130)
    score: float = Field(gt=0, le=1)
    born: date
    seen: datetime
    colour: Colour
    kind: Literal["customer", "supplier"]
    tags: list[str] = Field(min_length=2, max_length=3)
    address: Address | None
    friends: list[Person]
    extra: dict[str, int]


SCHEMAS: list[dict[str, Any]] = [
    Person.model_json_schema(),
    {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 7, "minimum": 10, "maximum": 20}},
     "required": ["n"], "additionalProperties": False},
    {"type": "number", "exclusiveMinimum": 2, "exclusiveMaximum": 3},
    {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    {"type": ["null", "string"], "format": "email"},
    {"type": "string", "format": "uuid"},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
               {"properties": {"b": {"const": 5}}, "required": ["b"]}]},
    {"oneOf": [{"type": "null"}, {"type": "boolean"}]},
    {"$defs": {"Node": {"type": "object", "properties": {"child": {"anyOf": [{"$ref": "#/$defs/Node"},
                                                                             {"type": "null"}]}},
                        "required": ["child"]}}, "$ref": "#/$defs/Node"},
    {"type": "string", "minLength": 50},
    {"type": "integer", "maximum": -5},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_value_validates_and_is_deterministic(schema: dict[str, Any]) -> None:
    value = sample(schema)
    errors = list(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(value))
    assert errors == [], (value, [e.message for e in errors])
    assert sample(schema) == value


def test_a_pydantic_model_round_trips() -> None:
    person = Person.model_validate(sample(Person.model_json_schema()))
    assert person.address is not None and len(person.tags) >= 2 and person.tags[0] != person.tags[1]


def test_request_shapes_of_both_apis() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    chat = {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}}
    responses = {"text": {"format": {"type": "json_schema", "name": "r", "schema": schema}}}
    assert json.loads(structured_text(chat, "prose") or "") == json.loads(structured_text(responses, "p") or "") == {
        "ok": True}
    assert json.loads(structured_text({"response_format": {"type": "json_object"}}, "hello") or "") == {
        "simulated": True, "answer": "hello"}
    assert structured_text({}, "hello") is None and structured_text({"text": {"format": {"type": "text"}}}, "x") is None


@pytest.mark.parametrize(("body", "fragment"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string",
                                                                            "pattern": "^[xyz]{9}$"}}}}, "pattern"),
    ({"response_format": {"type": "xml"}}, "unknown response format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/$defs/Missing"}}}},
     "points nowhere"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": []}}}}, "empty enum"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "integer", "minimum": 1,
                                                                            "maximum": 1, "multipleOf": 2}}}},
     "bounds"),
])
def test_what_cannot_be_generated_is_refused_by_name(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SchemaUnsupported, match=fragment):
        structured_text(body, "prose")
