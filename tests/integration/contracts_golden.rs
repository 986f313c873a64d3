//! Golden fixtures for the six contracts, and drift checks of generated artefacts (JSON
//! Schemas, the error-code table in docs/).

use std::path::{Path, PathBuf};

use awooop::contracts::{self, ContractKind};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

#[test]
fn golden_fixtures_valid_pass_and_invalid_fail_at_the_expected_path_with_the_expected_code() {
    let root = repo().join("tests/fixtures/contracts");
    // Body hashes of the valid fixtures from a second, independent canonicalizer
    // (tests/fixtures/generate.py, Python).
    let expected: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("hashes.json")).unwrap()).unwrap();
    let (mut hashed, mut reordered) = (0, 0);
    for kind in ContractKind::ALL {
        let valid = files(&root.join(kind.as_str()).join("valid"));
        let invalid = files(&root.join(kind.as_str()).join("invalid"));
        assert!(valid.len() >= 3, "{kind}: need several valid fixtures");
        assert!(invalid.len() >= 3, "{kind}: need several invalid fixtures");
        for f in valid {
            let body: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            if let Err(v) = contracts::validate(kind, &body) {
                panic!("{}: expected valid, got {v:?}", f.display());
            }
            let rel = f.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
            let want = expected
                .get(&rel)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{rel}: no hash in hashes.json (run generate.py)"));
            assert_eq!(contracts::canonical::body_hash(&body), want, "{rel}");
            // The same document with every object's keys reversed and pretty-printed hashes
            // the same: the hash is of the content, not of the text.
            let shuffled: Value =
                serde_json::from_str(&serde_json::to_string_pretty(&reversed(&body)).unwrap())
                    .unwrap();
            let (text, original) = (shuffled.to_string(), body.to_string());
            if text != original {
                reordered += 1;
            }
            assert_eq!(contracts::canonical::body_hash(&shuffled), want, "{rel}");
            hashed += 1;
        }
        for f in invalid {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            let violations = match contracts::validate(kind, &doc["body"]) {
                Ok(_) => panic!("{}: expected invalid, it passed", f.display()),
                Err(v) => v,
            };
            for e in doc["expect"].as_array().expect("expect: [...]") {
                let (path, code) = (e["path"].as_str().unwrap(), e["code"].as_str().unwrap());
                assert!(
                    violations.iter().any(|v| v.path == path && v.code == code),
                    "{}: expected {code} at '{path}', got {violations:?}",
                    f.display()
                );
            }
        }
    }
    assert_eq!(
        hashed,
        expected.len(),
        "hashes.json lists fixtures that do not exist"
    );
    assert!(
        reordered * 2 > hashed,
        "too few fixtures had keys to reorder"
    );
}

/// `v` with the keys of every object in reverse order (serde_json keeps insertion order here).
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .rev()
                .map(|(k, v)| (k.clone(), reversed(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

#[test]
fn committed_json_schemas_match_the_types() {
    let out = repo().join("operator/schemas");
    awooop::cli::schemas(&out, true).expect("run `cargo run -- schemas` and commit the result");
    for kind in ContractKind::ALL {
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(kind.schema_file())).unwrap())
                .unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(
            schema["additionalProperties"], false,
            "{kind}: unknown fields must be rejected"
        );
    }
}

#[test]
fn docs_error_table_matches_the_code() {
    let doc = std::fs::read_to_string(repo().join("docs/errors.md")).unwrap();
    let table = awooop::error::markdown_table();
    assert!(
        doc.contains(&table),
        "docs/errors.md is out of date: paste `awooop errors` output into it"
    );
}
