"""Tool schemas as MCP servers and OpenAPI generators write them reach Gemini in the subset it
takes, keeping every field the model must fill: Gemini refused `$schema` and `allOf`
(CLIProxyAPI #97, 9router #2489), and a schema cleaned by dropping what Gemini refuses loses
the fields the model then never sends. What Gemini refuses is the fake's check
(tests/fakes/gemini_provider.py, from Gemini's error messages)."""

from tests.fakes.gemini_provider import _schema_problem
from translators import gemini as g

COMPOSED = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"path": {"type": "string"}},
    "required": ["path"],
    "allOf": [
        {"$ref": "#/$defs/Paging"},
        {"properties": {"query": {"type": "string", "minLength": 1}}, "required": ["query"]},
    ],
    "$defs": {"Paging": {"type": "object", "additionalProperties": False,
                         "properties": {"limit": {"type": "integer", "exclusiveMinimum": 0}},
                         "required": ["limit"]}},
    "additionalProperties": False,
}


def test_all_of_is_merged_into_one_object_gemini_takes():
    out = g.clean_schema(COMPOSED)
    assert _schema_problem(COMPOSED, "parameters") is not None  # as written: refused
    assert _schema_problem(out, "parameters") is None
    assert out["type"] == "OBJECT"
    assert set(out["properties"]) == {"path", "limit", "query"}
    assert sorted(out["required"]) == ["limit", "path", "query"]
    assert out["properties"]["query"] == {"type": "STRING", "minLength": 1}


def test_one_of_becomes_any_of_and_nested_all_of_is_merged_too():
    schema = {"type": "object", "properties": {"target": {"oneOf": [
        {"type": "object", "allOf": [{"properties": {"file": {"type": "string"}}},
                                     {"properties": {"line": {"type": "integer"}}}]},
        {"type": "string"}]}}}
    out = g.clean_schema(schema)
    assert _schema_problem(out, "parameters") is None
    first, second = out["properties"]["target"]["anyOf"]
    assert set(first["properties"]) == {"file", "line"} and second == {"type": "STRING"}
