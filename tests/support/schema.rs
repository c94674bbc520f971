//! A small validator of objects against a CRD's openAPIV3Schema, as the API server checks them
//! (types, required fields, enums, bounds, unknown fields): no cluster needed.

use serde_json::Value;

/// Validates a whole object: apiVersion, kind and metadata belong to the API server; the rest
/// follows the schema.
pub fn validate_object(schema: &Value, object: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(obj) = object.as_object() else {
        return vec!["the manifest is not a mapping".to_string()];
    };
    if !obj.get("metadata").is_some_and(Value::is_object) {
        errors.push("metadata: must be a mapping".to_string());
    } else if !object["metadata"]["name"].is_string() {
        errors.push("metadata.name: required".to_string());
    }
    let rest: serde_json::Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    validate_value(schema, &Value::Object(rest), "", &mut errors);
    errors
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The checks of the API server's schema validation this project relies on: type, nullable,
/// int-or-string, enum, minimum/maximum, minItems/maxItems, required fields and unknown fields
/// (rejected unless additionalProperties or x-kubernetes-preserve-unknown-fields allows them).
/// Not checked: pattern, format, CEL rules.
pub fn validate_value(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != true {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_string() || is_integer(value)) {
            errors.push(format!(
                "{path}: expected an integer or a string, found {value}"
            ));
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => is_integer(value),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!(
            "{path}: expected {}, found {value}",
            schema["type"].as_str().unwrap_or("?")
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!(
            "{path}: {value} is not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    if let Some(x) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && x < min
        {
            errors.push(format!("{path}: {value} is below the minimum {min}"));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && x > max
        {
            errors.push(format!("{path}: {value} is above the maximum {max}"));
        }
    }
    match value {
        Value::Object(map) => {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                if !map.contains_key(name) {
                    errors.push(format!("{path}: missing required field {name}"));
                }
            }
            for (key, child) in map {
                let child_path = join(path, key);
                if let Some(prop) = schema["properties"].get(key) {
                    validate_value(prop, child, &child_path, errors);
                } else if schema["additionalProperties"].is_object() {
                    validate_value(&schema["additionalProperties"], child, &child_path, errors);
                } else if schema["additionalProperties"] != true
                    && schema["x-kubernetes-preserve-unknown-fields"] != true
                {
                    errors.push(format!("{child_path}: unknown field"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                errors.push(format!("{path}: fewer than {min} items"));
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errors.push(format!("{path}: more than {max} items"));
            }
            for (i, item) in items.iter().enumerate() {
                validate_value(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|x| x.fract() == 0.0)
}
