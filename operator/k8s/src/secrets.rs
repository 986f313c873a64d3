//! The gateway's Secret resolver on Kubernetes: a watched cache (kube-runtime reflector) of the
//! Secrets in the gateway's namespace that carry the label `awooop.dev/project`, so a tool call
//! never waits on the API server and RBAC can stay at `list`/`watch` on Secrets in that one
//! namespace.
//!
//! The rule both sides enforce: a Secret is usable for project P only if it carries
//! `awooop.dev/project=P`. The cache only holds labelled Secrets and returns the label with the
//! value; the gateway compares it with the calling project. Values are never logged, and
//! [`SecretEntry`]'s `Debug` hides them.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::controller::PROJECT_LABEL;
use awooop_core::error::{Error, ErrorCode, Result};

pub use awooop_gateway::credentials::SecretEntry;

/// A watched cache of the labelled Secrets of one namespace.
#[derive(Clone)]
pub struct KubeSecrets {
    store: Store<Secret>,
    namespace: String,
    _task: Arc<tokio::task::JoinHandle<()>>,
}

impl KubeSecrets {
    /// Start watching (a background task keeps the cache current until the last clone drops).
    pub fn start(client: kube::Client, namespace: &str) -> Self {
        let api = Api::<Secret>::namespaced(client, namespace);
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().labels(PROJECT_LABEL)),
        )
        .default_backoff()
        .touched_objects();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "Secret watch failed; retrying");
                }
            }
        });
        Self {
            store,
            namespace: namespace.to_string(),
            _task: Arc::new(task),
        }
    }

    /// Wait until the first LIST has filled the cache.
    pub async fn ready(&self) -> Result<()> {
        self.store.wait_until_ready().await.map_err(|_| {
            Error::new(
                ErrorCode::Unavailable,
                "the Secret cache stopped before it was filled",
            )
        })
    }

    /// The value of `key` in Secret `name`, with the Secret's project label; `None` when the
    /// Secret (labelled) or the key does not exist. Same signature as the gateway's
    /// `SecretLookup::get`.
    pub async fn get(&self, name: &str, key: &str) -> Result<Option<SecretEntry>> {
        let Some(secret) = self
            .store
            .get(&ObjectRef::<Secret>::new(name).within(&self.namespace))
        else {
            return Ok(None);
        };
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.as_bytes().to_vec())
            });
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        // The message names the Secret and key, never the bytes.
        let value = String::from_utf8(bytes).map_err(|_| {
            Error::new(
                ErrorCode::Internal,
                format!("Secret {name} key {key} is not UTF-8 text"),
            )
        })?;
        Ok(Some(SecretEntry {
            value,
            project_label: secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(PROJECT_LABEL).cloned()),
            resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
        }))
    }
}

/// The gateway resolves `kubernetes_secret` credential refs through this cache.
#[async_trait::async_trait]
impl awooop_gateway::credentials::SecretLookup for KubeSecrets {
    async fn get(&self, name: &str, key: &str) -> Result<Option<SecretEntry>> {
        KubeSecrets::get(self, name, key).await
    }
}

/// The worker pods' Secret resolver: the credential files the operator has Kubernetes mount
/// into the pods of one project (`<dir>/<secret>/<key>`, see
/// [`crate::workers::CREDENTIALS_DIR`]). Workers have no Kubernetes API access; the operator
/// mounts only refs whose Secret is labelled for the pod's project, so every entry here carries
/// that project as its label, and a value rotated in the Secret is read anew (the kubelet
/// updates the files; nothing is cached here, the resolver's TTL cache applies).
pub struct MountedSecrets {
    dir: std::path::PathBuf,
    project: String,
}

impl MountedSecrets {
    pub fn new(dir: impl Into<std::path::PathBuf>, project: &str) -> Self {
        Self {
            dir: dir.into(),
            project: project.to_string(),
        }
    }

    /// Secret names are DNS subdomains and keys `[-._a-zA-Z0-9]+`: anything else (a `/`, `..`,
    /// an empty part) cannot name a mounted file and is refused before touching the disk.
    fn path(&self, name: &str, key: &str) -> Option<std::path::PathBuf> {
        let ok = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || extra.contains(&b))
        };
        // A key may start with a dot (`.dockerconfigjson`), but never be `.` or start `..`.
        let name_ok = ok(name, b".") && !name.starts_with('.');
        let key_ok = ok(key, b"._") && key != "." && !key.starts_with("..");
        (name_ok && key_ok).then(|| self.dir.join(name).join(key))
    }
}

#[async_trait::async_trait]
impl awooop_gateway::credentials::SecretLookup for MountedSecrets {
    async fn get(&self, name: &str, key: &str) -> Result<Option<SecretEntry>> {
        let Some(path) = self.path(name, key) else {
            return Ok(None);
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("cannot read mounted Secret {name} key {key}: {}", e.kind()),
                ));
            }
        };
        let value = String::from_utf8(bytes).map_err(|_| {
            Error::new(
                ErrorCode::Internal,
                format!("Secret {name} key {key} is not UTF-8 text"),
            )
        })?;
        Ok(Some(SecretEntry {
            value,
            project_label: Some(self.project.clone()),
            resource_version: String::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use awooop_gateway::credentials::SecretLookup;

    #[tokio::test]
    async fn mounted_secrets_read_files_of_the_pods_project_only_by_safe_names() {
        let dir = std::env::temp_dir().join(format!("awooop-mounted-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("k8s-mcp")).unwrap();
        std::fs::write(dir.join("k8s-mcp/token"), "v1\n").unwrap();
        std::fs::write(dir.join("outside"), "no").unwrap();
        let m = MountedSecrets::new(&dir, "alpha");
        let e = m.get("k8s-mcp", "token").await.unwrap().unwrap();
        assert_eq!(e.value, "v1\n");
        assert_eq!(e.project_label.as_deref(), Some("alpha"));
        // Rotation: the kubelet rewrites the file; the next read sees it.
        std::fs::write(dir.join("k8s-mcp/token"), "v2").unwrap();
        assert_eq!(
            m.get("k8s-mcp", "token").await.unwrap().unwrap().value,
            "v2"
        );
        assert!(m.get("k8s-mcp", "nope").await.unwrap().is_none());
        for (n, k) in [
            ("..", "outside"),
            ("k8s-mcp", "../outside"),
            ("", "x"),
            ("a/b", "c"),
            ("k8s-mcp", ".."),
        ] {
            assert!(m.get(n, k).await.unwrap().is_none(), "{n}/{k}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
