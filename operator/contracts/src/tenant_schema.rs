//! Compiling JSON Schemas that tenants write (tool `input_schema`s in MCP Gateway contracts,
//! output-schema artifacts): one place, so every tenant schema gets the same limits.
//!
//! `pattern` and `patternProperties` are compiled with the `regex` crate, whose matching time
//! is linear in the input, instead of jsonschema's default `fancy-regex` (backtracking, so a
//! pattern with look-around or a back-reference can take exponential time on a crafted
//! argument: a tenant could stall a gateway thread shared with every other tenant). Patterns
//! that need backtracking features do not compile and the schema is refused at publish or
//! registration. The compiled size of each pattern is capped as well.

use serde_json::Value;

/// Largest compiled program of one tenant pattern (bytes, the `regex` crate's `size_limit`).
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Compile a tenant schema (Draft 2020-12) with the linear-time regex engine. The error is a
/// short reason safe to show to the tenant.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !jsonschema::draft202012::meta::is_valid(schema) {
        return Err("not a valid JSON Schema (Draft 2020-12)".into());
    }
    jsonschema::draft202012::options()
        .with_pattern_options(jsonschema::PatternOptions::regex().size_limit(PATTERN_SIZE_LIMIT))
        .build(schema)
        .map_err(|e| {
            format!(
                "cannot be compiled (patterns must use the linear-time regex syntax: no look-around or back-references): {}",
                truncate(&e.to_string(), 200)
            )
        })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backtracking_patterns_are_refused_linear_ones_work() {
        for p in [r"^(?=a)a+$", r"^(a)\1$", r"(?<!x)y"] {
            assert!(
                compile(&json!({"type": "string", "pattern": p})).is_err(),
                "{p}"
            );
        }
        let v = compile(&json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        assert!(v.is_valid(&json!("aaaa")));
        assert!(!v.is_valid(&json!(format!("{}b", "a".repeat(10_000)))));
        assert!(compile(&json!({"type": 12})).is_err());
    }
}
