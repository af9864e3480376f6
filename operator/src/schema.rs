//! Offline validation of a manifest against a CRD's structural OpenAPI v3 schema, the way the
//! API server would judge it: types, required fields, enums, and fields the schema does not
//! declare (the API server would prune them silently; here they are errors, so a manifest that
//! passes is stored unchanged).

use serde_json::Value;

/// Validates `value` against `schema`; returns every violation as `path: message`.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    errors
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let at = if path.is_empty() { "." } else { path };
    if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    if let Some(any_of) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        if !any_of.iter().any(|s| validate_in(s, value, path)) {
            errors.push(format!("{at}: matches none of the allowed shapes"));
        }
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok && schema.get("x-kubernetes-int-or-string").is_none() {
            errors.push(format!("{at}: expected {expected}, got {actual}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            errors.push(format!(
                "{at}: {value} is not one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = req.as_str() {
                    if !map.contains_key(name) {
                        errors.push(format!("{at}: required field {name:?} is missing"));
                    }
                }
            }
            for (k, v) in map {
                let child = format!("{path}.{k}");
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) => check(s, v, &child, errors),
                    (None, Some(s)) if s.is_object() => check(s, v, &child, errors),
                    (None, Some(Value::Bool(true))) => {}
                    _ if preserve => {}
                    _ => errors.push(format!("{child}: unknown field (not in the CRD schema)")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn validate_in(schema: &Value, value: &Value, path: &str) -> bool {
    let mut errors = Vec::new();
    check(schema, value, path, &mut errors);
    errors.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_types_required_enums_and_unknown_fields() {
        let schema = json!({"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "enum": ["x", "y"]},
            "n": {"type": "integer"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "list": {"type": "array", "items": {"type": "string"}}
        }});
        assert!(validate(
            &schema,
            &json!({"a": "x", "n": 3, "free": {"any": {"thing": 1}}, "list": ["s"]})
        )
        .is_empty());
        let errors = validate(
            &schema,
            &json!({"a": "z", "n": "3", "typo": 1, "list": [1]}),
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(validate(&schema, &json!({}))
            .iter()
            .any(|e| e.contains("required field \"a\"")));
    }
}
