//! The output schema validator and [`ValidatedOutput`], the only type the outbound path
//! accepts.
//!
//! An Agent contract may name an output JSON Schema artifact. The validator compiles it
//! (Draft 2020-12) and checks a run's final output against it. [`ValidatedOutput`] has a
//! private field and no public constructor: the only ways to obtain one are
//! [`OutputSchema::validate`] succeeding and [`OutputSchema::none`] (agents without an output
//! schema), so output that failed validation cannot be handed to a channel adapter
//! (`runtime::outbound::deliver_reply` takes a `&ValidatedOutput`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use awooop_contracts::AgentContract;
use awooop_control::ControlPlane;
use awooop_core::error::{Error, ErrorCode, Result};

/// Output that passed the agent's output schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedOutput(Value);

impl ValidatedOutput {
    pub fn value(&self) -> &Value {
        &self.0
    }

    pub fn into_value(self) -> Value {
        self.0
    }
}

/// A compiled output schema (or none).
#[derive(Clone)]
pub struct OutputSchema {
    validator: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for OutputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputSchema")
            .field("present", &self.validator.is_some())
            .finish()
    }
}

impl OutputSchema {
    /// An agent without an output schema: any output is valid.
    pub fn none() -> Self {
        Self { validator: None }
    }

    pub fn compile(schema: &Value) -> Result<Self> {
        let v = awooop_contracts::tenant_schema::compile(schema).map_err(|_| {
            Error::new(
                ErrorCode::SchemaViolation,
                "the agent's output schema is not a valid JSON Schema",
            )
        })?;
        Ok(Self {
            validator: Some(Arc::new(v)),
        })
    }

    pub fn is_present(&self) -> bool {
        self.validator.is_some()
    }

    /// Validate a run's output (`{"result": …, …}`): the schema applies to its `result`; the
    /// whole output is what is wrapped (and what a reply carries).
    pub fn validate_run_output(
        &self,
        output: Value,
    ) -> std::result::Result<ValidatedOutput, Vec<String>> {
        if let Some(v) = &self.validator {
            let result = output.get("result").unwrap_or(&Value::Null);
            let errors: Vec<String> = v
                .iter_errors(result)
                .take(20)
                .map(|e| format!("{}: {}", e.instance_path(), e))
                .collect();
            if !errors.is_empty() {
                return Err(errors);
            }
        }
        Ok(ValidatedOutput(output))
    }

    /// Validate; on failure the error lists each violation (`path: message`), which is also
    /// what the model is told when it is re-asked.
    pub fn validate(&self, output: Value) -> std::result::Result<ValidatedOutput, Vec<String>> {
        let Some(v) = &self.validator else {
            return Ok(ValidatedOutput(output));
        };
        let errors: Vec<String> = v
            .iter_errors(&output)
            .take(20)
            .map(|e| format!("{}: {}", e.instance_path(), e))
            .collect();
        if errors.is_empty() {
            Ok(ValidatedOutput(output))
        } else {
            Err(errors)
        }
    }
}

/// The `E-SCHEMA-001` error for output that never validated.
pub fn schema_error(errors: &[String]) -> Error {
    Error::new(
        ErrorCode::SchemaViolation,
        "the run's output does not satisfy the agent's output schema",
    )
    .with_details(serde_json::json!({"violations": errors}))
}

/// Loads and caches agents' output schemas (artifacts are content-addressed, so the cache is
/// keyed by hash and never stale).
#[derive(Clone, Default)]
pub struct SchemaCache {
    compiled: Arc<Mutex<HashMap<String, OutputSchema>>>,
}

impl SchemaCache {
    pub async fn for_agent(
        &self,
        control: &ControlPlane,
        agent: &AgentContract,
    ) -> Result<OutputSchema> {
        let Some(r) = &agent.output_schema else {
            return Ok(OutputSchema::none());
        };
        if let Some(s) = self.compiled.lock().expect("schema cache").get(&r.sha256) {
            return Ok(s.clone());
        }
        // Boxed: only a cache miss reads, and the read's future would otherwise sit inline in
        // every run task's future (the worker's `execute_in_scope`).
        let bytes = Box::pin(control.artifact(&r.reference, &r.sha256)).await?;
        let schema: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Error::new(
                ErrorCode::SchemaViolation,
                "the agent's output schema artifact is not JSON",
            )
        })?;
        let s = OutputSchema::compile(&schema)?;
        self.compiled
            .lock()
            .expect("schema cache")
            .insert(r.sha256.clone(), s.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_and_lists_violations() {
        let s = OutputSchema::compile(&json!({
            "type": "object", "required": ["answer"],
            "properties": {"answer": {"type": "string"}, "confidence": {"type": "number", "maximum": 1}},
            "additionalProperties": false
        }))
        .unwrap();
        assert!(s.validate(json!({"answer": "42"})).is_ok());
        for bad in [
            json!({}),
            json!({"answer": 42}),
            json!({"answer": "x", "confidence": 3}),
            json!({"answer": "x", "extra": true}),
            json!("just text"),
        ] {
            let errs = s.validate(bad.clone()).expect_err(&bad.to_string());
            assert!(!errs.is_empty());
        }
        assert!(OutputSchema::none().validate(json!("anything")).is_ok());
        assert_eq!(
            OutputSchema::compile(&json!({"type": 12}))
                .unwrap_err()
                .code
                .as_str(),
            "E-SCHEMA-001"
        );
    }
}
