//! `awooop schemas` and `awooop crdgen`: generated artefacts, written or checked for drift.

use super::*;

/// Write the generated schemas, or check them against the committed files.
pub fn schemas(out: &Path, check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for kind in ContractKind::ALL {
        let path = out.join(kind.schema_file());
        let text = format!("{}\n", serde_json::to_string_pretty(&kind.schema())?);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(out)?;
            std::fs::write(&path, text)?;
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "generated schemas differ from committed files (run `awooop schemas`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}

/// Write the CRD YAML files, or check them against the committed ones.
/// Writes (or checks) the same files into every folder given: `crds/` for `kubectl apply` and
/// the Helm chart's `charts/awooop/crds/`, so the two can never drift apart.
pub fn crdgen<P: AsRef<Path>>(outs: &[P], check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for out in outs {
        let out = out.as_ref();
        for (name, text) in crate::k8s::crd::crd_files() {
            let path = out.join(name);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                    stale.push(path.display().to_string());
                }
            } else {
                std::fs::create_dir_all(out)?;
                std::fs::write(&path, text)?;
            }
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "generated CRDs differ from committed files (run `awooop crdgen`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
