//! CRDs generated from the Rust types: committed YAML matches, parses back to the same object,
//! and the schemas follow the structural-schema rules the API server enforces.

use std::path::Path;

use awooop::k8s::crd::{AgentProject, McpGrant};
use kube::CustomResourceExt;
use serde_json::Value;

#[test]
fn committed_crds_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("crds");
    let chart = root.join("charts/awooop/crds");
    awooop::cli::crdgen(&[&out, &chart], true)
        .expect("run `awooop crdgen` and commit crds/ and charts/awooop/crds/");
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
        assert_eq!(
            std::fs::read_to_string(chart.join(name)).unwrap(),
            text,
            "the chart's copy of {name} differs from crds/"
        );
        let parsed: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            parsed, crd,
            "{name} does not parse back to the generated CRD"
        );
    }
}

/// Structural schema rules (apiextensions.k8s.io/v1, "Specifying a structural schema"): every
/// node has a type (or an explicit x-kubernetes escape), arrays say their items, no $ref and
/// no keywords the API server rejects (uniqueItems: true, patternProperties, additionalItems,
/// dependencies, definitions, id, $schema), properties and additionalProperties never together,
/// no additionalProperties: false, value validations only inside allOf/anyOf/oneOf/not, and
/// root `metadata` restricts nothing but name and generateName.
fn check_structural(path: &str, v: &Value, errors: &mut Vec<String>) {
    check_node(path, v, errors);
    if let Some(meta) = v
        .pointer("/properties/metadata/properties")
        .and_then(Value::as_object)
    {
        for k in meta
            .keys()
            .filter(|k| !["name", "generateName"].contains(&k.as_str()))
        {
            errors.push(format!(
                "{path}.metadata.{k}: root metadata may only restrict name and generateName"
            ));
        }
    }
}

fn check_node(path: &str, v: &Value, errors: &mut Vec<String>) {
    let Some(obj) = v.as_object() else { return };
    for forbidden in [
        "$ref",
        "patternProperties",
        "additionalItems",
        "dependencies",
        "definitions",
        "id",
        "$schema",
    ] {
        if obj.contains_key(forbidden) {
            errors.push(format!("{path}: {forbidden}"));
        }
    }
    if obj.get("uniqueItems") == Some(&Value::Bool(true)) {
        errors.push(format!("{path}: uniqueItems: true"));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        errors.push(format!("{path}: additionalProperties: false"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errors.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    let escaped = obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    if !obj.contains_key("type") && !escaped {
        errors.push(format!("{path}: no type"));
    }
    if obj.get("type") == Some(&Value::String("array".into())) && !obj.contains_key("items") {
        errors.push(format!("{path}: array without items"));
    }
    for junctor in ["allOf", "anyOf", "oneOf", "not"] {
        let branches = match obj.get(junctor) {
            Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
            Some(one) => vec![one],
            None => continue,
        };
        for b in branches {
            for k in [
                "type",
                "default",
                "description",
                "nullable",
                "additionalProperties",
                "x-kubernetes-preserve-unknown-fields",
            ] {
                if b.get(k).is_some() {
                    errors.push(format!("{path}.{junctor}: {k} inside a junctor"));
                }
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            check_node(&format!("{path}.{k}"), p, errors);
        }
    }
    if let Some(items) = obj.get("items") {
        check_node(&format!("{path}[]"), items, errors);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        check_node(&format!("{path}{{*}}"), ap, errors);
    }
}

/// The checker is not vacuous: each rule catches a schema the API server would reject.
#[test]
fn structural_checker_rejects_non_structural_schemas() {
    use serde_json::json;
    let cases = [
        (
            json!({"type": "object", "properties": {"a": {}}}),
            ".a: no type",
        ),
        (json!({"type": "array"}), ": array without items"),
        (
            json!({"type": "object", "properties": {"a": {"$ref": "#/x", "type": "object"}}}),
            ".a: $ref",
        ),
        (
            json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true}),
            ": uniqueItems: true",
        ),
        (
            json!({"type": "object", "additionalProperties": false}),
            ": additionalProperties: false",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
            ": properties and additionalProperties together",
        ),
        (
            json!({"type": "object", "patternProperties": {}}),
            ": patternProperties",
        ),
        (
            json!({"type": "string", "anyOf": [{"type": "string"}]}),
            ".anyOf: type inside a junctor",
        ),
        (
            json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}}),
            ".metadata.labels: root metadata may only restrict name and generateName",
        ),
    ];
    for (schema, want) in cases {
        let mut errors = Vec::new();
        check_structural("", &schema, &mut errors);
        assert!(
            errors.iter().any(|e| e == want),
            "{schema}: {errors:?}, wanted {want:?}"
        );
    }
    let mut errors = Vec::new();
    check_structural(
        "",
        &json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}},
            "n": {"type": "integer", "anyOf": [{"minimum": 0}]}, "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "q": {"x-kubernetes-int-or-string": true}}}),
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
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

/// The file sink mirrors PostgreSQL: active revisions become manifests; a retired grant's file
/// disappears; files we did not write are left alone.
#[tokio::test]
async fn file_sink_projects_active_revisions_and_removes_retired_ones() {
    use crate::support::*;
    use awooop::contracts::ContractKind;
    use awooop::tenancy;
    use serde_json::json;

    let t = TestDb::new().await;
    let cp = t.control(awooop::coord::Coord::none());
    let p = project(&cp, "alpha", 1).await;
    let project_body = json!({
        "display_name": "Alpha",
        "data_boundary": {"default_class": "internal", "allowed_classes": ["internal"]},
        "budget": {"period": "day", "token_limit": 1000}, "acl": {},
        "approval": {"required_approvals": 1, "ttl_seconds": 3600}, "environments": ["prod"],
        "workers": {"min_replicas": 1, "max_replicas": 4, "runs_per_replica": 10}
    });
    let gateway = |agents: &[&str]| {
        json!({
            "credential_refs": [{"name": "tok", "source": {"kubernetes_secret": {"name": "k8s-mcp", "key": "token"}}}],
            "providers": [{"name": "k8s", "transport": {"type": "streamable_http", "url": "http://k8s/mcp"},
                "credentials": [{"credential": "tok", "inject": {"type": "header", "name": "Authorization"}}]}],
            "tools": [{"provider": "k8s", "name": "get_pods", "risk": "read_only", "environments": ["prod"], "input_schema": {"type": "object"}}],
            "grants": agents.iter().map(|a| json!({"agent": a, "tools": ["k8s__get_pods"], "environments": ["prod"]})).collect::<Vec<_>>()
        })
    };
    let (prev, _) = tenancy::scope(p.clone(), async {
        let r = publish(&cp, ContractKind::Project, "alpha", project_body).await;
        approve_and_activate(&cp, r, 1).await;
        let g = publish(
            &cp,
            ContractKind::McpGateway,
            "default",
            gateway(&["triage", "reporter"]),
        )
        .await;
        approve_and_activate(&cp, g, 1).await;
        (r, g)
    })
    .await;
    let dir = std::env::temp_dir().join(format!("awooop-sink-{}", t.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("alpha")).unwrap();
    std::fs::write(dir.join("alpha/README.yaml"), "# someone else's file\n").unwrap();
    let w = awooop::k8s::sink::export(&cp, &dir, "awooop")
        .await
        .unwrap();
    assert_eq!((w.projects, w.grants, w.removed), (1, 2, 0));
    let text = std::fs::read_to_string(dir.join("alpha/agentproject.yaml")).unwrap();
    let ap: awooop::k8s::crd::AgentProject = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(ap.spec.revision_id, prev.to_string());
    assert_eq!(ap.spec.mode, "shadow");
    assert_eq!(ap.spec.workers.max_replicas, 4);
    assert_eq!(ap.metadata.namespace.as_deref(), Some("awooop"));
    let grant: awooop::k8s::crd::McpGrant = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.join("alpha/mcpgrant-triage.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(grant.spec.credential_refs[0].name, "k8s-mcp");
    assert!(
        !std::fs::read_to_string(dir.join("alpha/mcpgrant-triage.yaml"))
            .unwrap()
            .contains("value")
    );
    // Retire the reporter grant: its file goes, the other files stay.
    tenancy::scope(p.clone(), async {
        let g = publish(
            &cp,
            ContractKind::McpGateway,
            "default",
            gateway(&["triage"]),
        )
        .await;
        approve_and_activate(&cp, g, 1).await;
    })
    .await;
    let w = awooop::k8s::sink::export(&cp, &dir, "awooop")
        .await
        .unwrap();
    assert_eq!((w.projects, w.grants, w.removed), (1, 1, 1));
    assert!(!dir.join("alpha/mcpgrant-reporter.yaml").exists());
    assert!(dir.join("alpha/README.yaml").exists());
    let _ = std::fs::remove_dir_all(&dir);
    t.cleanup().await;
}
