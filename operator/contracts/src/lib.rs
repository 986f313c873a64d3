//! The six contracts: typed models, generated JSON Schemas, validation and hashing.
//!
//! Validation is a pure function and fails closed: a document is valid only when it passes its
//! Draft 2020-12 JSON Schema (generated from the Rust type), deserialises into the type (which
//! rejects unknown fields) and satisfies the cross-field rules in [`rules`]. Every violation is
//! reported with a JSON pointer and a stable code.

pub use awooop_core::canonical;
pub mod rules;
pub mod signing;
pub mod tenant_schema;
pub mod types;

use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use awooop_core::error::{Error, ErrorCode};
pub use types::*;

/// The six contract kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum ContractKind {
    Project,
    Agent,
    McpGateway,
    Policy,
    Runtime,
    Channel,
}

impl ContractKind {
    pub const ALL: [ContractKind; 6] = [
        Self::Project,
        Self::Agent,
        Self::McpGateway,
        Self::Policy,
        Self::Runtime,
        Self::Channel,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parse a kind; unknown kinds are an error with code `E-CONTRACT-001`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        s.parse().map_err(|_| {
            Error::new(
                ErrorCode::ContractUnknownKind,
                "unknown contract kind (expected one of project, agent, mcp_gateway, policy, runtime, channel)",
            )
        })
    }

    /// The generated JSON Schema of this kind (Draft 2020-12), with `$id` and title.
    pub fn schema(self) -> Value {
        // Optional fields are omitted, never `null`: a null is rejected like any wrong type, and
        // the schema stays free of `anyOf [T, null]` wrappers that would blur error paths.
        let mut schema = match self {
            Self::Project => schemars::schema_for!(ProjectContract),
            Self::Agent => schemars::schema_for!(AgentContract),
            Self::McpGateway => schemars::schema_for!(McpGatewayContract),
            Self::Policy => schemars::schema_for!(PolicyContract),
            Self::Runtime => schemars::schema_for!(RuntimeContract),
            Self::Channel => schemars::schema_for!(ChannelContract),
        }
        .to_value();
        strip_null(&mut schema);
        if let Some(obj) = schema.as_object_mut() {
            obj.insert(
                "$id".into(),
                Value::String(format!(
                    "https://awooop.dev/schemas/contracts/{}.schema.json",
                    self.as_str()
                )),
            );
        }
        schema
    }

    /// File name of the committed schema under `operator/schemas/`.
    pub fn schema_file(self) -> String {
        format!("{}.schema.json", self.as_str())
    }

    fn validator(self) -> &'static jsonschema::Validator {
        static VALIDATORS: LazyLock<Vec<jsonschema::Validator>> = LazyLock::new(|| {
            ContractKind::ALL
                .iter()
                .map(|k| {
                    jsonschema::draft202012::new(&k.schema())
                        .expect("generated contract schemas compile")
                })
                .collect()
        });
        &VALIDATORS[self as usize]
    }
}

impl std::fmt::Display for ContractKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Remove the `null` alternative schemars adds for `Option<T>` (`anyOf: [T, {type: null}]` or
/// `type: [T, "null"]`). Contracts have no meaningful nulls, so only `T` remains.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(alts)) = m.get("anyOf")
                && alts.len() == 2
                && let Some(i) = alts
                    .iter()
                    .position(|a| a == &serde_json::json!({"type": "null"}))
            {
                let keep = alts[1 - i].clone();
                m.remove("anyOf");
                if let Value::Object(k) = keep {
                    for (key, val) in k {
                        m.insert(key, val);
                    }
                }
            }
            if let Some(Value::Array(types)) = m.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types[0].clone();
                    m.insert("type".into(), t);
                }
            }
            for (_, child) in m.iter_mut() {
                strip_null(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// A typed, validated contract body.
#[derive(Debug, Clone, PartialEq)]
pub enum Contract {
    Project(ProjectContract),
    Agent(AgentContract),
    McpGateway(McpGatewayContract),
    Policy(PolicyContract),
    Runtime(RuntimeContract),
    Channel(ChannelContract),
}

impl Contract {
    pub fn kind(&self) -> ContractKind {
        match self {
            Contract::Project(_) => ContractKind::Project,
            Contract::Agent(_) => ContractKind::Agent,
            Contract::McpGateway(_) => ContractKind::McpGateway,
            Contract::Policy(_) => ContractKind::Policy,
            Contract::Runtime(_) => ContractKind::Runtime,
            Contract::Channel(_) => ContractKind::Channel,
        }
    }

    /// Every artifact the contract references (checked against `artifact_refs` at publish).
    pub fn artifact_refs(&self) -> Vec<&ArtifactRef> {
        match self {
            Contract::Agent(a) => a
                .prompt
                .iter()
                .chain(a.input_schema.iter())
                .chain(a.output_schema.iter())
                .chain(a.evals.iter())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// One reason a document is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the document ("" is the root).
    pub path: String,
    /// Stable code (`E-SCHEMA-001`, `E-CONTRACT-002`, `E-CONTRACT-003`).
    pub code: &'static str,
    pub message: String,
}

/// A body that passed validation, with its canonical form and hash.
#[derive(Debug, Clone)]
pub struct ValidatedBody {
    pub contract: Contract,
    /// RFC 8785 canonical JSON of the body.
    pub canonical: String,
    /// `sha256:<hex>` of `canonical`.
    pub body_hash: String,
}

/// Validate a document as a contract of `kind`. Pure; fails closed.
pub fn validate(kind: ContractKind, body: &Value) -> Result<Contract, Vec<Violation>> {
    let validator = kind.validator();
    if !validator.is_valid(body) {
        let mut out: Vec<Violation> = Vec::new();
        for e in validator.iter_errors(body) {
            collect_violations(&e, &mut out);
        }
        out.sort_by(|a, b| a.path.cmp(&b.path).then(a.code.cmp(b.code)));
        out.dedup();
        return Err(out);
    }
    // The schema and the type agree by construction (one is generated from the other), but the
    // type is what the rest of the platform uses, so its verdict is final too.
    let contract = match deserialize(kind, body) {
        Ok(c) => c,
        Err(e) => {
            return Err(vec![Violation {
                path: String::new(),
                code: ErrorCode::SchemaViolation.as_str(),
                message: e.to_string(),
            }]);
        }
    };
    let mut violations = rules::check(&contract);
    if violations.is_empty() {
        Ok(contract)
    } else {
        violations.sort_by(|a, b| a.path.cmp(&b.path));
        Err(violations)
    }
}

/// Validate, canonicalise and hash. The error carries every violation in `details`.
pub fn validate_and_hash(kind: ContractKind, body: &Value) -> Result<ValidatedBody, Error> {
    let contract = validate(kind, body).map_err(violations_error)?;
    let canonical = canonical::canonicalize(body);
    let body_hash = canonical::sha256_ref(&canonical);
    let canonical = String::from_utf8(canonical).expect("canonical JSON is UTF-8");
    Ok(ValidatedBody {
        contract,
        canonical,
        body_hash,
    })
}

/// Turn violations into one error whose code is the first violation's.
pub fn violations_error(violations: Vec<Violation>) -> Error {
    let code = violations
        .first()
        .and_then(|v| {
            ErrorCode::ALL
                .iter()
                .find(|c| c.as_str() == v.code)
                .copied()
        })
        .unwrap_or(ErrorCode::SchemaViolation);
    let summary = violations
        .first()
        .map(|v| format!("{} at '{}'", v.message, v.path))
        .unwrap_or_default();
    Error::new(code, format!("contract is invalid: {summary}"))
        .with_details(serde_json::json!({ "violations": violations }))
}

fn deserialize(kind: ContractKind, body: &Value) -> Result<Contract, serde_json::Error> {
    Ok(match kind {
        ContractKind::Project => Contract::Project(ProjectContract::deserialize(body)?),
        ContractKind::Agent => Contract::Agent(AgentContract::deserialize(body)?),
        ContractKind::McpGateway => Contract::McpGateway(McpGatewayContract::deserialize(body)?),
        ContractKind::Policy => Contract::Policy(PolicyContract::deserialize(body)?),
        ContractKind::Runtime => Contract::Runtime(RuntimeContract::deserialize(body)?),
        ContractKind::Channel => Contract::Channel(ChannelContract::deserialize(body)?),
    })
}

/// Flatten a schema error into violations. For `anyOf`/`oneOf` (optional values, tagged
/// enums) the branch the document evidently meant is the one whose discriminator (`type`
/// constant) and JSON type matched; its errors are reported at their own precise paths.
fn collect_violations(e: &jsonschema::ValidationError<'_>, out: &mut Vec<Violation>) {
    use jsonschema::error::ValidationErrorKind as K;
    let context = match e.kind() {
        K::AnyOf { context } | K::OneOfNotValid { context } => context,
        _ => {
            out.push(schema_violation(e));
            return;
        }
    };
    let parent = e.instance_path().to_string();
    let tag = format!("{parent}/type");
    let best = context
        .iter()
        .filter(|branch| {
            !branch.iter().any(|x| {
                let p = x.instance_path().to_string();
                (p == parent && matches!(x.kind(), K::Type { .. }))
                    || (p == tag && matches!(x.kind(), K::Constant { .. } | K::Enum { .. }))
            })
        })
        .min_by_key(|b| b.len());
    match best {
        Some(branch) if !branch.is_empty() => {
            for x in branch {
                collect_violations(x, out);
            }
        }
        _ => out.push(schema_violation(e)),
    }
}

fn schema_violation(e: &jsonschema::ValidationError<'_>) -> Violation {
    use jsonschema::error::ValidationErrorKind as K;
    let path = e.instance_path().to_string();
    // A malformed artifact hash gets its own code: it is the one schema rule callers most need
    // to tell apart (they computed a hash wrongly, the document is otherwise fine).
    let is_hash =
        path.ends_with("/sha256") && matches!(e.kind(), K::Pattern { .. } | K::Type { .. });
    match e.kind() {
        K::AdditionalProperties { unexpected } => Violation {
            path,
            code: ErrorCode::SchemaViolation.as_str(),
            message: format!("unknown field(s): {}", unexpected.join(", ")),
        },
        _ if is_hash => Violation {
            path,
            code: ErrorCode::ContractBadHash.as_str(),
            message: "artifact hash must be sha256:<64 lowercase hex>".into(),
        },
        _ => Violation {
            path,
            code: ErrorCode::SchemaViolation.as_str(),
            message: truncate(&e.to_string(), 300),
        },
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// JSON Schema of a type, used for the hash newtype checks in tests.
pub fn schema_of<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}
