//! CRDs generated from the Rust types: committed YAML matches, parses back to the same object,
//! and the schemas follow the structural-schema rules the API server enforces.

use std::path::Path;

use awooop::k8s::crd::{AgentProject, McpGrant};
use kube::CustomResourceExt;
use serde_json::Value;

#[test]
fn committed_crds_match_the_types() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    awooop::cli::crdgen(&out, true).expect("run `awooop crdgen` and commit crds/");
    for (name, crd) in [
        (
            "agentprojects.awooop.dev.yaml",
            serde_json::to_value(AgentProject::crd()).unwrap(),
        ),
        (
            "mcpgrants.awooop.dev.yaml",
            serde_json::to_value(McpGrant::crd()).unwrap(),
        ),
    ] {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        let parsed: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            parsed, crd,
            "{name} does not parse back to the generated CRD"
        );
    }
}

/// Structural schema rules (apiextensions.k8s.io/v1): every node has a type (or an explicit
/// x-kubernetes escape), no $ref, no additionalProperties: false, no nullable-only tricks.
fn check_structural(path: &str, v: &Value, errors: &mut Vec<String>) {
    let Some(obj) = v.as_object() else { return };
    if obj.contains_key("$ref") {
        errors.push(format!("{path}: $ref"));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        errors.push(format!("{path}: additionalProperties: false"));
    }
    let escaped = obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    if !obj.contains_key("type") && !escaped {
        errors.push(format!("{path}: no type"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            check_structural(&format!("{path}.{k}"), p, errors);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, errors);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(&format!("{path}{{*}}"), ap, errors);
    }
}

#[test]
fn crd_schemas_are_structural_with_status_subresource_and_printer_columns() {
    for crd in [
        serde_json::to_value(AgentProject::crd()).unwrap(),
        serde_json::to_value(McpGrant::crd()).unwrap(),
    ] {
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(
            version["subresources"]["status"].is_object(),
            "status subresource"
        );
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(
            columns.contains(&"Revision") && columns.contains(&"Ready") && columns.contains(&"Age"),
            "{columns:?}"
        );
        assert!(
            crd["spec"]["names"]["shortNames"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        );
        let schema = &version["schema"]["openAPIV3Schema"];
        let mut errors = Vec::new();
        check_structural("", schema, &mut errors);
        assert!(errors.is_empty(), "{}: {errors:?}", crd["metadata"]["name"]);
        // Field docs became descriptions.
        assert!(
            schema["properties"]["spec"]["properties"]["bodyHash"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("sha256"))
        );
    }
}
