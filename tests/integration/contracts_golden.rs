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
            // Hashing is stable across a round trip through text.
            let again: Value = serde_json::from_str(&body.to_string()).unwrap();
            assert_eq!(
                contracts::canonical::body_hash(&body),
                contracts::canonical::body_hash(&again)
            );
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
