//! Credential resolution: refs in contracts, values only at call time, only for their project.
//!
//! Contract:
//! * Agents never see a credential: values are resolved here and go only into the upstream
//!   request (a header or the child's environment), and into the exact-value redactor of that
//!   call's result.
//! * A value is resolvable for project P only when its source is bound to P:
//!   - `kubernetes_secret`: the Secret carries the label `awooop.dev/project=P` (checked on
//!     every resolution; a missing label or another project's label is a denial with the same
//!     generic message as a missing Secret). Without a [`SecretLookup`] (no cluster) these refs
//!     fail with `E-MCP-005`.
//!   - `env`: the pair `P:VAR` is listed in `AWOOOP_GATEWAY_ENV_CREDENTIALS`.
//!   - `file`: the canonical path (symlinks resolved) lies under
//!     `AWOOOP_GATEWAY_CREDENTIAL_DIR/P/`.
//! * Values are cached per (project, source) for a TTL, so rotation is picked up within it;
//!   the cache key includes the project, so nothing resolved for one project is served to
//!   another.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use awooop_contracts::CredentialSource;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::tenancy::ProjectId;

/// The label a Kubernetes Secret must carry to be resolvable for a project.
pub const PROJECT_LABEL: &str = "awooop.dev/project";

/// A credential value. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Self(s.into())
    }
    /// The value, for injection into an upstream request and for exact-value redaction only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One key of a Kubernetes Secret as the API reports it.
#[derive(Clone)]
pub struct SecretEntry {
    pub value: String,
    /// Value of the Secret's `awooop.dev/project` label, if any.
    pub project_label: Option<String>,
    pub resource_version: String,
}

impl std::fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEntry")
            .field("value", &"<redacted>")
            .field("project_label", &self.project_label)
            .field("resource_version", &self.resource_version)
            .finish()
    }
}

/// Reads Secrets (the operator implements it with a watched cache of the Kubernetes API).
#[async_trait]
pub trait SecretLookup: Send + Sync {
    async fn get(&self, name: &str, key: &str) -> Result<Option<SecretEntry>>;
}

/// The rules binding local (env/file) credentials to projects.
#[derive(Debug, Clone, Default)]
pub struct LocalPolicy {
    /// (project, variable) pairs.
    env: HashSet<(String, String)>,
    dir: Option<PathBuf>,
}

impl LocalPolicy {
    /// `env_list` is `project:VAR,project:VAR,...`; `dir` the credential folder.
    pub fn parse(env_list: Option<&str>, dir: Option<&Path>) -> Result<Self> {
        let mut env = HashSet::new();
        for item in env_list
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let bad = || {
                Error::new(
                    ErrorCode::ReqInvalidParam,
                    "AWOOOP_GATEWAY_ENV_CREDENTIALS entries are project:VARIABLE",
                )
            };
            let (p, v) = item.split_once(':').ok_or_else(bad)?;
            ProjectId::parse(p).map_err(|_| bad())?;
            let var_ok = !v.is_empty()
                && v.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
                && v.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !var_ok {
                return Err(bad());
            }
            env.insert((p.to_string(), v.to_string()));
        }
        Ok(Self {
            env,
            dir: dir.map(Path::to_path_buf),
        })
    }

    /// May project `p` read environment variable `var`?
    pub fn env_allowed(&self, p: &ProjectId, var: &str) -> bool {
        self.env
            .contains(&(p.as_str().to_string(), var.to_string()))
    }

    /// The canonical path of `path` if it lies inside the project's credential folder.
    pub fn file_allowed(&self, p: &ProjectId, path: &str) -> Option<PathBuf> {
        let root = self.dir.as_ref()?.join(p.as_str()).canonicalize().ok()?;
        let real = Path::new(path).canonicalize().ok()?;
        (real.starts_with(&root) && real != root).then_some(real)
    }
}

fn denied() -> Error {
    // One message for every failure: it must not reveal whether a Secret, variable or file
    // exists, or which project owns it.
    Error::new(
        ErrorCode::McpCredential,
        "a credential of this tool could not be resolved for this project",
    )
}

type CacheKey = (ProjectId, String);

pub struct CredentialResolver {
    lookup: Option<Arc<dyn SecretLookup>>,
    local: LocalPolicy,
    ttl: Duration,
    cache: RwLock<HashMap<CacheKey, (Instant, SecretValue)>>,
}

impl CredentialResolver {
    pub fn new(lookup: Option<Arc<dyn SecretLookup>>, local: LocalPolicy, ttl: Duration) -> Self {
        Self {
            lookup,
            local,
            ttl,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Drop cached values (tests, or on a Secret watch event).
    pub fn invalidate(&self) {
        self.cache.write().expect("cache lock").clear();
    }

    fn cache_key(project: &ProjectId, source: &CredentialSource) -> CacheKey {
        let s = match source {
            CredentialSource::KubernetesSecret { name, key } => format!("k8s\0{name}\0{key}"),
            CredentialSource::Env { var } => format!("env\0{var}"),
            CredentialSource::File { path } => format!("file\0{path}"),
        };
        (project.clone(), s)
    }

    pub async fn resolve(
        &self,
        project: &ProjectId,
        source: &CredentialSource,
    ) -> Result<SecretValue> {
        let key = Self::cache_key(project, source);
        if !self.ttl.is_zero()
            && let Some((at, v)) = self.cache.read().expect("cache lock").get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        // Boxed: a miss is rare, and inline the fetch would enlarge every tool call's future.
        let value = Box::pin(self.fetch(project, source)).await?;
        if !self.ttl.is_zero() {
            self.cache
                .write()
                .expect("cache lock")
                .insert(key, (Instant::now(), value.clone()));
        }
        Ok(value)
    }

    async fn fetch(&self, project: &ProjectId, source: &CredentialSource) -> Result<SecretValue> {
        match source {
            CredentialSource::KubernetesSecret { name, key } => {
                let Some(lookup) = &self.lookup else {
                    return Err(Error::new(
                        ErrorCode::McpCredential,
                        "kubernetes_secret credentials need the in-cluster operator (no Kubernetes API here)",
                    ));
                };
                let entry = lookup.get(name, key).await.map_err(|e| {
                    tracing::warn!(code = e.code.as_str(), "secret lookup failed");
                    denied()
                })?;
                match entry {
                    Some(e) if e.project_label.as_deref() == Some(project.as_str()) => {
                        Ok(SecretValue::new(stored_value(&e.value)))
                    }
                    _ => Err(denied()),
                }
            }
            CredentialSource::Env { var } => {
                if !self.local.env_allowed(project, var) {
                    return Err(denied());
                }
                std::env::var(var)
                    .map(SecretValue::new)
                    .map_err(|_| denied())
            }
            CredentialSource::File { path } => {
                let real = self.local.file_allowed(project, path).ok_or_else(denied)?;
                let text = tokio::fs::read_to_string(&real)
                    .await
                    .map_err(|_| denied())?;
                Ok(SecretValue::new(stored_value(&text)))
            }
        }
    }
}

/// The one rule for a credential value read from storage, used for files and Kubernetes Secret
/// keys alike: trailing line breaks (`\n`, `\r\n`, any number) are removed, everything else
/// is kept byte for byte (leading and inner whitespace included). `kubectl create secret
/// --from-file` and `echo "…" > file` both leave a newline a header value must not carry, and
/// the same bytes must give the same credential whichever source holds them.
pub fn stored_value(text: &str) -> &str {
    text.trim_end_matches(['\n', '\r'])
}

/// An in-memory [`SecretLookup`], standing in for the Kubernetes API in tests and local runs.
#[derive(Default)]
pub struct MemorySecrets {
    entries: RwLock<HashMap<(String, String), SecretEntry>>,
}

impl MemorySecrets {
    pub fn put(&self, name: &str, key: &str, value: &str, project_label: Option<&str>) {
        let mut m = self.entries.write().expect("lock");
        let version = m
            .get(&(name.to_string(), key.to_string()))
            .and_then(|e| e.resource_version.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        m.insert(
            (name.to_string(), key.to_string()),
            SecretEntry {
                value: value.to_string(),
                project_label: project_label.map(str::to_string),
                resource_version: version.to_string(),
            },
        );
    }
}

#[async_trait]
impl SecretLookup for MemorySecrets {
    async fn get(&self, name: &str, key: &str) -> Result<Option<SecretEntry>> {
        Ok(self
            .entries
            .read()
            .expect("lock")
            .get(&(name.to_string(), key.to_string()))
            .cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ProjectId {
        ProjectId::parse(s).unwrap()
    }

    #[test]
    fn env_allowlist_is_per_project() {
        let pol = LocalPolicy::parse(Some("awoooi:PROM_API_KEY, ewoooc:SHOP_KEY"), None).unwrap();
        assert!(pol.env_allowed(&p("awoooi"), "PROM_API_KEY"));
        assert!(!pol.env_allowed(&p("ewoooc"), "PROM_API_KEY"));
        assert!(!pol.env_allowed(&p("awoooi"), "SHOP_KEY"));
        for bad in ["awoooi", "awoooi:lower", "BAD:X", ":X", "awoooi:"] {
            assert!(LocalPolicy::parse(Some(bad), None).is_err(), "{bad}");
        }
        assert!(LocalPolicy::parse(None, None).unwrap().env.is_empty());
    }

    #[tokio::test]
    async fn files_only_under_the_projects_folder() {
        let root = std::env::temp_dir().join(format!("awooop-cred-{}", uuid::Uuid::new_v4()));
        for proj in ["alpha", "beta"] {
            std::fs::create_dir_all(root.join(proj)).unwrap();
            std::fs::write(
                root.join(proj).join("token"),
                format!("{proj}-secret-value\n"),
            )
            .unwrap();
        }
        // a symlink in alpha's folder pointing at beta's file must not escape
        std::os::unix::fs::symlink(root.join("beta/token"), root.join("alpha/link")).unwrap();
        let pol = LocalPolicy::parse(None, Some(&root)).unwrap();
        let r = CredentialResolver::new(None, pol, Duration::ZERO);
        let file = |s: &str| CredentialSource::File {
            path: root.join(s).display().to_string(),
        };
        let v = r.resolve(&p("alpha"), &file("alpha/token")).await.unwrap();
        assert_eq!(v.expose(), "alpha-secret-value");
        assert!(!format!("{v:?}").contains("alpha-secret"));
        for (proj, f) in [
            ("alpha", "beta/token"),
            ("alpha", "alpha/link"),
            ("alpha", "alpha/../beta/token"),
            ("beta", "alpha/token"),
            ("alpha", "alpha/missing"),
        ] {
            let e = r.resolve(&p(proj), &file(f)).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::McpCredential, "{proj} {f}");
            assert!(!e.message.contains("beta") && !e.message.contains("alpha"));
        }
        // env refs not on the list are refused even when the variable exists
        let e = r
            .resolve(&p("alpha"), &CredentialSource::Env { var: "PATH".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::McpCredential);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn secrets_need_the_project_label_and_rotation_is_picked_up() {
        let secrets = Arc::new(MemorySecrets::default());
        secrets.put("a-token", "token", "value-1-for-alpha", Some("alpha"));
        secrets.put("unlabelled", "token", "value-x", None);
        let r = CredentialResolver::new(
            Some(secrets.clone()),
            LocalPolicy::default(),
            Duration::from_secs(3600),
        );
        let src = |n: &str| CredentialSource::KubernetesSecret {
            name: n.into(),
            key: "token".into(),
        };
        assert_eq!(
            r.resolve(&p("alpha"), &src("a-token"))
                .await
                .unwrap()
                .expose(),
            "value-1-for-alpha"
        );
        assert!(
            r.resolve(&p("beta"), &src("a-token")).await.is_err(),
            "other project"
        );
        assert!(r.resolve(&p("alpha"), &src("unlabelled")).await.is_err());
        assert!(r.resolve(&p("alpha"), &src("missing")).await.is_err());
        // rotation: cached until the TTL passes (here: invalidation), then the new value
        secrets.put("a-token", "token", "value-2-for-alpha", Some("alpha"));
        assert_eq!(
            r.resolve(&p("alpha"), &src("a-token"))
                .await
                .unwrap()
                .expose(),
            "value-1-for-alpha"
        );
        r.invalidate();
        assert_eq!(
            r.resolve(&p("alpha"), &src("a-token"))
                .await
                .unwrap()
                .expose(),
            "value-2-for-alpha"
        );
        // relabelled to another project: no longer resolvable for alpha
        secrets.put("a-token", "token", "value-3", Some("beta"));
        r.invalidate();
        assert!(r.resolve(&p("alpha"), &src("a-token")).await.is_err());
        // without a lookup (no cluster) the ref fails clearly
        let none = CredentialResolver::new(None, LocalPolicy::default(), Duration::ZERO);
        let e = none
            .resolve(&p("alpha"), &src("a-token"))
            .await
            .unwrap_err();
        assert!(e.message.contains("in-cluster operator"));
    }
}
