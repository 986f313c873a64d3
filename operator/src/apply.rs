//! Applying contract files and onboarding tenants from a folder: the file-system and keyring
//! edges around [`awooop_control::apply`] (which decides and writes). One path for
//! `awooop apply`, `awooop project onboard` and the seeding of `awooop up` (its `--onboard`
//! folders and the EwoooC example, [`crate::example`]).
//!
//! Artifacts an Agent contract references (prompt, input/output schema, evals: `{"ref":
//! "prompts/x", "sha256": ...}`) are registered from files beside the contract file: `ref`
//! itself or `ref` plus one extension (`prompts/x.md`), relative to the contract file's
//! folder. The file's hash must be the one the contract names (`E-APPLY-004` otherwise:
//! a folder whose prompt was edited without its contract is refused before anything is
//! written, the project included). An artifact already registered with that hash is left alone, so onboarding
//! stays idempotent.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::auth::Actor;
use crate::contracts::{self, Contract, ContractKind};
use crate::control::NewProject;
use crate::control::apply::{self, Applied, ApplyOptions, Approvals, ContractDoc, Header};
use crate::error::{Error, ErrorCode};
use crate::platform::{Platform, create_signing_key};
use crate::tenancy::{self, ProjectId};

/// Largest contract file read (contracts are small; a huge file is a mistake or an attack).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Read contract files: each path is a file or a folder whose `*.json` files (not recursive)
/// are read in name order. `flags` fill what headers leave out.
pub fn load(paths: &[PathBuf], flags: &Header) -> Result<Vec<ContractDoc>, Error> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| read_error(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        return Err(Error::new(
            ErrorCode::ApplyNothing,
            "no contract file (*.json) found",
        ));
    }
    // Kind and name flags name one document; on a folder they would silently apply to all.
    if files.len() > 1 && (flags.kind.is_some() || flags.name.is_some()) {
        return Err(Error::new(
            ErrorCode::ApplyConflict,
            "--kind and --name apply to a single file; give files in a folder a `# awooop:` header",
        ));
    }
    files
        .iter()
        .map(|f| {
            let source = f.display().to_string();
            let len = std::fs::metadata(f).map_err(|e| read_error(f, e))?.len();
            if len > MAX_FILE_BYTES {
                return Err(Error::new(
                    ErrorCode::ApplyBadFile,
                    format!("{source}: larger than {MAX_FILE_BYTES} bytes"),
                ));
            }
            let text = std::fs::read_to_string(f).map_err(|e| read_error(f, e))?;
            let (header, body) = apply::parse_file(&source, &text)?;
            let file_name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            apply::resolve(&source, &file_name, header, flags, body)
        })
        .collect()
}

fn read_error(p: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorCode::ApplyBadFile,
        format!("cannot read {}: {e}", p.display()),
    )
}

/// Register `key_id` for `project` when it is not: from the keyring when the key is there,
/// else (only for the local key) generated into the keyring file first.
async fn ensure_signing_key(
    p: &Platform,
    keyring_file: &Path,
    project: &ProjectId,
    key_id: &str,
) -> anyhow::Result<()> {
    let registered: bool = tenancy::scope(project.clone(), async {
        let mut tx = p.control.db().tenant().await?;
        let n: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM signing_keys WHERE key_id = $1 AND revoked_at IS NULL)",
        )
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, Error>(n)
    })
    .await?;
    let in_ring = crate::platform::load_keyring_file(keyring_file)?
        .get(key_id)
        .is_some();
    if !registered && (in_ring || key_id == "local") {
        create_signing_key(p, keyring_file, project, key_id).await?;
    }
    Ok(())
}

/// Whose approvals to give: `--approve-as`, none with `--no-approve`, else the local
/// platform's own when signing with its local key.
pub fn approvals(args: &crate::config::ApproveArgs) -> Approvals {
    if !args.approve_as.is_empty() {
        Approvals::As(args.approve_as.clone())
    } else if args.no_approve || args.key_id != "local" {
        Approvals::None
    } else {
        Approvals::Local
    }
}

/// Apply documents, grouped by project (in order of first appearance): first the artifacts
/// their Agent contracts reference (see the module docs), then the documents in
/// [`apply::apply_order`]. Stops at the first error: what was applied before stays applied
/// and the next run continues from there.
pub async fn apply_docs(
    p: &Platform,
    keyring_file: &Path,
    mut docs: Vec<ContractDoc>,
    opts: &ApplyOptions,
) -> anyhow::Result<(Vec<ArtifactApplied>, Vec<Applied>)> {
    let mut projects: Vec<String> = Vec::new();
    for d in &docs {
        let Some(pr) = &d.project else {
            return Err(Error::new(
                ErrorCode::ApplyBadFile,
                format!(
                    "{}: no project: add `# awooop: project=P` or pass --project",
                    d.source
                ),
            )
            .into());
        };
        if !projects.contains(pr) {
            projects.push(pr.clone());
        }
    }
    docs.sort_by_key(|d| apply::apply_order(d.kind));
    // Every artifact file is found and hashed before anything is written.
    let files = artifact_files(&docs)?;
    let mut artifacts = Vec::new();
    let mut out = Vec::new();
    for pr in projects {
        let project = ProjectId::parse(&pr)?;
        ensure_signing_key(p, keyring_file, &project, &opts.key_id).await?;
        for f in files.iter().filter(|f| f.project == pr) {
            artifacts
                .push(tenancy::scope(project.clone(), register_artifact(p, f, &opts.actor)).await?);
        }
        for d in docs.iter().filter(|d| d.project.as_deref() == Some(&pr)) {
            out.push(tenancy::scope(project.clone(), p.control.apply(d, opts)).await?);
        }
    }
    Ok((artifacts, out))
}

/// An artifact file found beside a contract file, checked against the contract's hash.
#[derive(Debug, Clone)]
struct ArtifactFile {
    project: String,
    reference: String,
    sha256: String,
    /// `prompt`, `schema` or `eval` (`artifact_refs.artifact_kind`).
    kind: &'static str,
    media_type: &'static str,
    path: PathBuf,
    content: Vec<u8>,
}

/// What happened to one artifact.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactApplied {
    pub project: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub sha256: String,
    pub file: String,
    /// False: it was registered with this hash already (nothing written).
    pub registered: bool,
}

impl ArtifactApplied {
    pub fn summary(&self) -> String {
        let what = format!("{}/artifact/{}", self.project, self.reference);
        if self.registered {
            format!("{what}: registered from {} ({})", self.file, self.sha256)
        } else {
            format!("{what}: unchanged ({})", self.sha256)
        }
    }
}

/// The artifact files the Agent documents reference, deduplicated, each hash-checked.
fn artifact_files(docs: &[ContractDoc]) -> Result<Vec<ArtifactFile>, Error> {
    let mut out: Vec<ArtifactFile> = Vec::new();
    for d in docs.iter().filter(|d| d.kind == ContractKind::Agent) {
        // An invalid body is reported by `apply` with its violations; nothing to look up here.
        let Ok(Contract::Agent(a)) = contracts::validate(d.kind, &d.body) else {
            continue;
        };
        let project = d.project.clone().unwrap_or_default();
        let refs = a
            .prompt
            .iter()
            .map(|r| (r, "prompt"))
            .chain(a.input_schema.iter().map(|r| (r, "schema")))
            .chain(a.output_schema.iter().map(|r| (r, "schema")))
            .chain(a.evals.iter().map(|r| (r, "eval")));
        // Relative to the folder of the contract file (`source` is its path).
        let root = Path::new(&d.source)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for (r, kind) in refs {
            if out
                .iter()
                .any(|f| f.project == project && f.reference == r.reference && f.sha256 == r.sha256)
            {
                continue;
            }
            let Some(path) = find_artifact(&root, &r.reference)? else {
                // Not beside the contract: it may be registered already (`awooop artifact`
                // or the API); publish refuses it with E-CONTRACT-013 when it is not.
                continue;
            };
            let content = read_bounded(&path)?;
            let sha = crate::contracts::canonical::sha256_ref(&content);
            if sha != r.sha256 {
                return Err(Error::new(
                    ErrorCode::ApplyArtifactMismatch,
                    format!(
                        "{}: its sha256 is {sha}, but {} names {} for `{}`: put the file's hash in the contract (or restore the file)",
                        path.display(),
                        d.source,
                        r.sha256,
                        r.reference
                    ),
                ));
            }
            let media_type = match path.extension().and_then(|e| e.to_str()) {
                Some("md") => "text/markdown",
                Some("json") => "application/json",
                Some("txt") => "text/plain",
                Some("yaml" | "yml") => "application/yaml",
                _ => "application/octet-stream",
            };
            out.push(ArtifactFile {
                project: project.clone(),
                reference: r.reference.clone(),
                sha256: sha,
                kind,
                media_type,
                path,
                content,
            });
        }
    }
    Ok(out)
}

/// The file of artifact `reference` under `root`: `root/reference`, else the one file
/// `root/reference.EXT`. A reference that would leave `root` (absolute, `..`) names no file:
/// a contract never makes onboarding read outside its folder.
fn find_artifact(root: &Path, reference: &str) -> Result<Option<PathBuf>, Error> {
    use std::path::Component;
    let rel = Path::new(reference);
    if reference.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Ok(None);
    }
    let exact = root.join(rel);
    if exact.is_file() {
        return Ok(Some(exact));
    }
    let (Some(dir), Some(stem)) = (exact.parent(), rel.file_name()) else {
        return Ok(None);
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file() && f.file_stem() == Some(stem) && f.extension().is_some())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::new(
            ErrorCode::ApplyConflict,
            format!(
                "artifact `{reference}`: more than one file could be it ({}); keep one",
                found
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn read_bounded(f: &Path) -> Result<Vec<u8>, Error> {
    let len = std::fs::metadata(f).map_err(|e| read_error(f, e))?.len();
    if len > MAX_FILE_BYTES {
        return Err(Error::new(
            ErrorCode::ApplyBadFile,
            format!("{}: larger than {MAX_FILE_BYTES} bytes", f.display()),
        ));
    }
    std::fs::read(f).map_err(|e| read_error(f, e))
}

/// Register one artifact in the current tenant scope unless it is registered with its hash.
async fn register_artifact(
    p: &Platform,
    f: &ArtifactFile,
    actor: &str,
) -> Result<ArtifactApplied, Error> {
    let registered = match p.control.artifact(&f.reference, &f.sha256).await {
        Ok(_) => false,
        Err(e) if e.code == ErrorCode::ContractArtifactMissing => {
            p.control
                .put_artifact(
                    &Actor::cli(actor),
                    &f.reference,
                    f.kind,
                    f.media_type,
                    &f.content,
                )
                .await?;
            true
        }
        Err(e) => return Err(e),
    };
    Ok(ArtifactApplied {
        project: f.project.clone(),
        reference: f.reference.clone(),
        sha256: f.sha256.clone(),
        file: f.path.display().to_string(),
        registered,
    })
}

/// What `project onboard` did.
#[derive(Debug, Serialize)]
pub struct Onboarded {
    pub project: String,
    /// True when this run created the project.
    pub created: bool,
    /// Artifacts registered from files of the folder (see the module docs).
    pub artifacts: Vec<ArtifactApplied>,
    pub contracts: Vec<Applied>,
    /// Contract kinds the folder does not provide (a complete tenant has all six).
    pub missing_kinds: Vec<String>,
}

impl Onboarded {
    pub fn lines(&self) -> Vec<String> {
        let mut l = vec![if self.created {
            format!("project {}: created", self.project)
        } else {
            format!("project {}: exists", self.project)
        }];
        l.extend(self.artifacts.iter().map(ArtifactApplied::summary));
        l.extend(self.contracts.iter().map(Applied::summary));
        if !self.missing_kinds.is_empty() {
            l.push(format!(
                "not in the folder: {} (the project works without them only where defaults exist)",
                self.missing_kinds.join(", ")
            ));
        }
        l
    }
}

/// Onboard a tenant from a folder: create the project when missing (display name and
/// approval count from its Project contract), then apply every file of the folder into it.
/// Every step is idempotent, so a failed onboarding is resumed by running it again.
pub async fn onboard(
    p: &Platform,
    keyring_file: &Path,
    dir: &Path,
    project: Option<&str>,
    opts: &ApplyOptions,
) -> anyhow::Result<Onboarded> {
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorCode::ApplyNothing,
            format!("{} is not a folder", dir.display()),
        )
        .into());
    }
    let flags = Header {
        project: project.map(str::to_string),
        ..Default::default()
    };
    let mut docs = load(&[dir.to_path_buf()], &flags)?;
    // The project is the one the files agree on (a file naming another is refused below).
    let named: Vec<&str> = docs.iter().filter_map(|d| d.project.as_deref()).collect();
    let project_id = match (project, named.first()) {
        (Some(p), _) => p.to_string(),
        (None, Some(p)) => p.to_string(),
        (None, None) => {
            return Err(Error::new(
                ErrorCode::ApplyBadFile,
                "the files name no project: add `# awooop: project=P` headers or pass --project",
            )
            .into());
        }
    };
    let pid = ProjectId::parse(&project_id)?;
    for d in &mut docs {
        if let Some(x) = d.project.as_deref()
            && x != pid.as_str()
        {
            return Err(Error::new(
                ErrorCode::ApplyConflict,
                format!("{}: names project `{x}` while onboarding `{pid}`", d.source),
            )
            .into());
        }
        d.project = Some(pid.to_string());
    }
    let Some(project_doc) = docs
        .iter()
        .find(|d| d.kind == ContractKind::Project && d.name == pid.as_str())
    else {
        return Err(Error::new(
            ErrorCode::ApplyNothing,
            format!(
                "{}: no Project contract named `{pid}` (an onboarding folder holds the tenant's Project contract)",
                dir.display()
            ),
        )
        .into());
    };
    let Contract::Project(pc) = contracts::validate(ContractKind::Project, &project_doc.body)
        .map_err(contracts::violations_error)?
    else {
        unreachable!("a Project document validates into a Project contract");
    };
    // Artifact files are checked before the project is created: a folder whose prompt was
    // edited without its contract leaves nothing behind.
    artifact_files(&docs)?;
    let exists = p
        .control
        .list_projects(&Actor::cli("cli"))
        .await?
        .iter()
        .any(|v| v.project.project_id == pid.as_str());
    if !exists {
        p.control
            .create_project(
                &Actor::cli(&opts.actor),
                NewProject {
                    project_id: pid.to_string(),
                    display_name: pc.display_name.clone(),
                    required_approvals: Some(i32::from(pc.approval.required_approvals)),
                },
            )
            .await?;
    }
    let missing_kinds = ContractKind::ALL
        .iter()
        .filter(|k| !docs.iter().any(|d| d.kind == **k))
        .map(|k| k.as_str().to_string())
        .collect();
    let (artifacts, contracts) = apply_docs(p, keyring_file, docs, opts).await?;
    Ok(Onboarded {
        project: pid.to_string(),
        created: !exists,
        artifacts,
        contracts,
        missing_kinds,
    })
}

/// Onboard a folder the way `awooop up` seeds its local tenants: signed with the local key,
/// approved as the local platform's approvers (see [`Approvals::Local`]), recorded as `up`.
/// Idempotent, so `up` may call it on every start.
pub async fn onboard_local(
    p: &Platform,
    keyring_file: &Path,
    dir: &Path,
) -> anyhow::Result<Onboarded> {
    let opts = ApplyOptions {
        actor: "up".into(),
        key_id: "local".into(),
        approvals: Approvals::Local,
    };
    onboard(p, keyring_file, dir, None, &opts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_files_are_found_beside_the_contract_and_never_outside_it() {
        let root = std::env::temp_dir().join(format!("awooop-artifacts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("prompts")).unwrap();
        std::fs::write(root.join("prompts/a.md"), "A").unwrap();
        std::fs::write(root.join("prompts/b"), "B").unwrap();
        std::fs::write(root.join("prompts/c.md"), "C").unwrap();
        std::fs::write(root.join("prompts/c.txt"), "C").unwrap();
        std::fs::write(root.join("secret.md"), "S").unwrap();
        let found = |r: &str| find_artifact(&root.join("prompts").join(".."), r);
        assert_eq!(
            found("prompts/a").unwrap(),
            Some(root.join("prompts/../prompts/a.md"))
        );
        assert_eq!(
            found("prompts/b").unwrap(),
            Some(root.join("prompts/../prompts/b"))
        );
        assert_eq!(found("prompts/none").unwrap(), None);
        // Two candidates: refused, never a silent pick.
        assert_eq!(
            found("prompts/c").unwrap_err().code,
            ErrorCode::ApplyConflict
        );
        // Nothing outside the folder, whatever the contract says.
        let inner = root.join("prompts");
        for r in ["../secret", "/etc/passwd", "", "./../secret"] {
            assert_eq!(find_artifact(&inner, r).unwrap(), None, "{r}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
