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
