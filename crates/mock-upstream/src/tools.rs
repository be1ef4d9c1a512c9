//! Tool calls, whatever the provider: which declared tool the mock calls
//! ([`pick`]), and arguments that fit its JSON schema ([`arguments`]).

use serde_json::{Map, Value, json};

/// A tool the request declares: its name and its parameters' schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolSpec {
    pub(crate) name: String,
    pub(crate) schema: Value,
}

/// The call the mock answers with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolCall {
    /// The call's id without the provider's prefix (`call_`, `toolu_`…).
    pub(crate) id: String,
    pub(crate) name: String,
    /// The arguments, a JSON object.
    pub(crate) arguments: Value,
}

impl ToolCall {
    pub(crate) fn new(tool: &ToolSpec, serial: u64) -> ToolCall {
        ToolCall { id: format!("mock{serial}"), name: tool.name.clone(), arguments: arguments(&tool.schema) }
    }

    /// The arguments as JSON text, as OpenAI sends them and as Anthropic
    /// streams them.
    pub(crate) fn arguments_text(&self) -> String {
        self.arguments.to_string()
    }
}

/// What a request's tool choice allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice<'a> {
    /// Any declared tool: the first is called.
    Any,
    /// This one.
    Named(&'a str),
    /// None.
    Forbidden,
}

impl<'a> Choice<'a> {
    /// The choice a request makes: `forbidden`, else the tool `named`, else any.
    pub(crate) fn of(named: Option<&'a str>, forbidden: bool) -> Choice<'a> {
        match (forbidden, named) {
            (true, _) => Choice::Forbidden,
            (false, Some(name)) => Choice::Named(name),
            (false, None) => Choice::Any,
        }
    }
}

/// The tool to call among `declared` (name and schema, in order), as
/// `choice` allows; none when nothing usable is declared.
pub(crate) fn pick<'a>(declared: impl Iterator<Item = (&'a Value, &'a Value)>, choice: Choice<'_>) -> Option<ToolSpec> {
    let mut usable = declared.filter_map(|(name, schema)| Some((name.as_str()?, schema)));
    let (name, schema) = match choice {
        Choice::Forbidden => return None,
        Choice::Named(wanted) => usable.find(|(name, _)| *name == wanted)?,
        Choice::Any => usable.next()?,
    };
    Some(ToolSpec { name: name.to_owned(), schema: schema.clone() })
}

/// Arguments that fit `schema`: every property gets a plain value of its
/// type (the first of an `enum`, `"mock"`, `1`, `1.5`, `true`, a list of
/// one item), nested objects filled alike. Schemas may use JSON Schema's
/// lowercase types or Gemini's uppercase ones.
pub(crate) fn arguments(schema: &Value) -> Value {
    match value(schema, 0) {
        object @ Value::Object(_) => object,
        _ => json!({}),
    }
}

/// How deep nested schemas are filled: deeper, an empty value.
const DEPTH: u32 = 8;

fn value(schema: &Value, depth: u32) -> Value {
    if depth > DEPTH {
        return Value::Null;
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    if let Some(first) =
        ["anyOf", "oneOf"].iter().find_map(|k| schema.get(*k).and_then(Value::as_array).and_then(|v| v.first()))
    {
        return value(first, depth + 1);
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.to_ascii_lowercase(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| !k.eq_ignore_ascii_case("null"))
            .unwrap_or("null")
            .to_ascii_lowercase(),
        _ if schema.get("properties").is_some() => "object".to_owned(),
        _ => "string".to_owned(),
    };
    match kind.as_str() {
        "object" => {
            let mut object = Map::new();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, property) in properties {
                    object.insert(name.clone(), value(property, depth + 1));
                }
            }
            Value::Object(object)
        }
        "array" => json!([value(schema.get("items").unwrap_or(&Value::Null), depth + 1)]),
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("mock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_fill_every_property_with_a_value_of_its_type() {
        let check = |schema: Value, expect: Value| assert_eq!(arguments(&schema), expect, "{schema}");
        check(
            json!({"type": "object", "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "at": {"type": "object", "properties": {"lat": {"type": "number"}}},
                "maybe": {"type": ["null", "boolean"]},
            }}),
            json!({"city": "mock", "unit": "celsius", "days": 1, "tags": ["mock"], "at": {"lat": 1.5}, "maybe": true}),
        );
        // Gemini's uppercase types.
        check(json!({"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}}), json!({"n": 1}));
        // Not an object schema, or none: empty arguments.
        check(json!({"type": "string"}), json!({}));
        check(Value::Null, json!({}));
    }

    #[test]
    fn a_hostile_schema_nested_deep_is_filled_to_a_bound() {
        let mut schema = json!({"type": "object"});
        for _ in 0..100 {
            schema = json!({"type": "object", "properties": {"a": schema}});
        }
        let filled = arguments(&schema).to_string();
        assert!(filled.matches("\"a\"").count() <= 9, "{filled}");
    }

    #[test]
    fn the_forced_tool_is_picked_else_the_first_and_none_when_forbidden() {
        let tools = [(json!("a"), json!({})), (json!("b"), json!({"type": "object"})), (json!(3), json!({}))];
        let names = || tools.iter().map(|(n, s)| (n, s));
        assert_eq!(pick(names(), Choice::Any).map(|t| t.name), Some("a".to_owned()));
        assert_eq!(pick(names(), Choice::Named("b")).map(|t| t.name), Some("b".to_owned()));
        assert_eq!(pick(names(), Choice::Named("c")), None);
        assert_eq!(pick(names(), Choice::Forbidden), None);
        assert_eq!(Choice::of(Some("b"), true), Choice::Forbidden);
        assert_eq!(Choice::of(Some("b"), false), Choice::Named("b"));
    }
}
