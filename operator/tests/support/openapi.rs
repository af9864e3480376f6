//! The one OpenAPI v3 validator of the tests: a value against a structural schema, as the
//! Kubernetes API server judges a custom resource. The strict fake checks every write with it,
//! `operator/tests/crds.rs` the CRDs' own examples, and `tests/tests/deploy.rs` (which includes
//! this file) the deploy example.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Validates `v` against the subset of structural OpenAPI v3 the generated CRDs use.
pub fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    // Combinators are not implemented (the generated CRDs use none): a schema with one is
    // refused, never taken as passed.
    for keyword in ["allOf", "anyOf", "oneOf", "not"] {
        if schema.get(keyword).is_some() {
            errors.push(format!(
                "{shown}: the schema uses {keyword}, which this validator does not check"
            ));
        }
    }
    if v.is_null() {
        if schema["nullable"].as_bool() != Some(true) {
            errors.push(format!(
                "{shown}: Invalid value: \"null\": {shown} in body must not be null"
            ));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errors.push(format!(
                "{shown}: Unsupported value: {v}: supported values: {}",
                allowed
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    let ty = schema["type"].as_str().unwrap_or_default();
    let type_ok = match ty {
        "" => true,
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string() || (int_or_string && (v.is_i64() || v.is_u64())),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        other => {
            errors.push(format!("{shown}: the schema names an unknown type {other}"));
            return;
        }
    };
    if !type_ok {
        errors.push(format!(
            "{shown}: Invalid value: {v}: {shown} in body must be of type {ty}"
        ));
        return;
    }
    match v {
        Value::Object(o) => object(schema, o, path, errors),
        Value::Array(items) => {
            if let Some(n) = schema["maxItems"].as_u64() {
                if items.len() as u64 > n {
                    errors.push(format!(
                        "{shown}: Too many: {}: must have at most {n} items",
                        items.len()
                    ));
                }
            }
            if let Some(n) = schema["minItems"].as_u64() {
                if (items.len() as u64) < n {
                    errors.push(format!("{shown}: Invalid value: {}: {shown} in body should have at least {n} items", items.len()));
                }
            }
            if schema["items"].is_object() {
                for (i, item) in items.iter().enumerate() {
                    validate(&schema["items"], item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(n) = schema["maxLength"].as_u64() {
                if chars > n {
                    errors.push(format!("{shown}: Too long: may not be more than {n} bytes"));
                }
            }
            if let Some(n) = schema["minLength"].as_u64() {
                if chars < n {
                    errors.push(format!("{shown}: Invalid value: {s:?}: {shown} in body should be at least {n} chars long"));
                }
            }
            if let Some(p) = schema["pattern"].as_str() {
                if !compiled(p).is_match(s) {
                    errors.push(format!(
                        "{shown}: Invalid value: {s:?}: {shown} in body should match '{p}'"
                    ));
                }
            }
            if schema["format"].as_str() == Some("date-time") && !date_time(s) {
                errors.push(format!(
                    "{shown}: Invalid value: {s:?}: {shown} in body must be of type date-time"
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(max) = schema["maximum"].as_f64() {
                if x > max {
                    errors.push(format!("{shown}: Invalid value: {n}: {shown} in body should be less than or equal to {max}"));
                }
            }
            if let Some(min) = schema["minimum"].as_f64() {
                if x < min {
                    errors.push(format!("{shown}: Invalid value: {n}: {shown} in body should be greater than or equal to {min}"));
                }
            }
        }
        _ => {}
    }
}

fn object(schema: &Value, o: &Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    let props = schema["properties"].as_object();
    for req in schema["required"].as_array().into_iter().flatten() {
        let key = req.as_str().unwrap_or_default();
        // A null in a field that is not nullable is pruned before validation, so it is as
        // good as absent.
        let present = o.get(key).is_some_and(|x| {
            !x.is_null()
                || props
                    .and_then(|p| p.get(key))
                    .is_some_and(|s| s["nullable"] == true)
        });
        if !present {
            errors.push(format!("{}: Required value", join(path, key)));
        }
    }
    let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    for (k, x) in o {
        let child = join(path, k);
        match (
            props.and_then(|p| p.get(k)),
            &schema["additionalProperties"],
        ) {
            (Some(s), _) => {
                if !(x.is_null() && s["nullable"] != true) {
                    validate(s, x, &child, errors);
                }
            }
            (None, add) if add.is_object() => validate(add, x, &child, errors),
            (None, add) if add == &Value::Bool(true) || preserve => {}
            (None, _) => errors.push(format!(
                "{child}: unknown field (the real API server drops it, with a warning)"
            )),
        }
    }
}

/// `pattern` compiled once per process (a write at 100,000 keys was mostly compiling them).
fn compiled(pattern: &str) -> regex::Regex {
    static CACHE: OnceLock<std::sync::Mutex<HashMap<String, regex::Regex>>> = OnceLock::new();
    CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(pattern.to_owned())
        .or_insert_with(|| regex::Regex::new(pattern).expect("the pattern compiles"))
        .clone()
}

/// RFC 3339 date-time, as Kubernetes' `date-time` format takes it.
fn date_time(s: &str) -> bool {
    compiled(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$").is_match(s)
}
