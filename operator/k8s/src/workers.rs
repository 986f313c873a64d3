//! Worker Deployments (pure): one Deployment per AgentProject running
//! `awooop worker --project P`, its replica count from the project's queue depth, and whether
//! the Deployment in the cluster still matches what we want.
//!
//! Pods run hardened (non-root, read-only root filesystem, no capabilities, no service-account
//! token: workers talk to PostgreSQL, never to the Kubernetes API) and get their database URL
//! from a Secret mounted as a file (never the Deployment spec, never an environment variable:
//! workers start stdio children).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, KeyToPath, PodSecurityContext, PodSpec,
    PodTemplateSpec, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretProjection,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::crd::{AgentProject, SecretKeyRef, WorkerBounds};
use super::project::MANAGER;

/// Annotation carrying the hash of the Deployment we applied: a different hash (or replica
/// count) in the cluster means it must be applied again.
pub const SPEC_HASH: &str = "awooop.dev/spec-hash";

/// Where worker pods find their project's credential refs: `<dir>/<secret>/<key>`, read through
/// `AWOOOP_WORKER_CREDENTIALS_DIR` ([`crate::secrets::MountedSecrets`]).
pub const CREDENTIALS_DIR: &str = "/etc/awooop/credentials";

/// The pod's credential volume: a `projected` volume of exactly the Secret keys the project's
/// grants reference *and* that resolve for it (labelled `awooop.dev/project=P`, key present).
/// Kubernetes mounts them, so the operator never copies a value and workers need no API
/// access; the kubelet refreshes mounted values when a Secret is rotated (no restart). Each
/// source is `optional`, so a Secret deleted meanwhile never keeps a pod from starting (its
/// refs then fail closed, as missing ones do). Another project's Secret can never be listed:
/// only refs that resolve for this project are.
fn credentials_volume(refs: &[SecretKeyRef]) -> Option<Volume> {
    if refs.is_empty() {
        return None;
    }
    let mut by_secret: BTreeMap<&str, Vec<&SecretKeyRef>> = BTreeMap::new();
    for r in refs {
        by_secret.entry(r.name.as_str()).or_default().push(r);
    }
    let sources = by_secret
        .into_iter()
        .map(|(name, refs)| VolumeProjection {
            secret: Some(SecretProjection {
                name: name.to_string(),
                optional: Some(true),
                items: Some(
                    refs.iter()
                        .map(|r| KeyToPath {
                            key: r.key.clone(),
                            path: format!("{}/{}", r.name, r.key),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        })
        .collect();
    Some(Volume {
        name: "credentials".to_string(),
        projected: Some(ProjectedVolumeSource {
            // 0440: the pod's user and group only, not a stdio child's uid.
            default_mode: Some(0o440),
            sources: Some(sources),
        }),
        ..Default::default()
    })
}

/// How worker pods are built (from `AWOOOP_WORKER_IMAGE` and `AWOOOP_WORKER_DB_SECRET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    pub image: String,
    /// Secret with key `database-url` (the runtime role's URL), mounted into the pods as a file
    /// read through `AWOOOP_APP_DATABASE_URL_FILE`: worker pods start stdio children, so the
    /// URL is never an environment variable, and they run no migration.
    pub db_secret: String,
    /// What the platform administrator allows each project's workers, whatever its contract
    /// says (flags of `awooop operator`).
    pub limits: WorkerLimits,
}

/// Per-project caps and pod resources of worker Deployments, set by the administrator (not by
/// tenants): a project's Project contract chooses replicas only within `max_replicas`, each
/// pod runs at most `slots` runs at once and opens at most `db_max_connections` connections,
/// so one project can take at most `max_replicas × slots` concurrent runs and
/// `max_replicas × db_max_connections` database connections; requests and limits keep one
/// project's pods from starving another's on a shared node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLimits {
    pub max_replicas: i32,
    pub slots: u32,
    pub db_max_connections: u32,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            max_replicas: 10,
            slots: 16,
            db_max_connections: 8,
            cpu_request: "100m".into(),
            cpu_limit: "1".into(),
            memory_request: "128Mi".into(),
            memory_limit: "512Mi".into(),
        }
    }
}

/// Name of a project's worker Deployment.
pub fn deployment_name(project: &str) -> String {
    format!("awooop-worker-{project}")
}

/// Replicas for a queue depth: enough replicas for `runs_per_replica` queued runs each,
/// within the contract's bounds. A `runs_per_replica` of 0 (impossible by schema) counts as 1.
pub fn desired_replicas(bounds: &WorkerBounds, queue_depth: i64) -> i32 {
    let per = i64::from(bounds.runs_per_replica.max(1));
    let want = (queue_depth.max(0) + per - 1) / per;
    let max = bounds.max_replicas.max(bounds.min_replicas);
    want.clamp(i64::from(bounds.min_replicas), i64::from(max)) as i32
}

/// The desired worker Deployment of an AgentProject that exists in the cluster (its `uid` is
/// needed for the owner reference, so the Deployment is garbage-collected with it).
pub fn deployment(
    namespace: &str,
    ap: &AgentProject,
    uid: &str,
    settings: &WorkerSettings,
    replicas: i32,
    credentials: &[SecretKeyRef],
) -> Deployment {
    let project = ap.spec.project_id.as_str();
    let limits = &settings.limits;
    // The administrator's cap wins over the contract's max_replicas.
    let replicas = replicas.min(limits.max_replicas.max(0));
    let strings = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let selector = strings(&[
        ("app.kubernetes.io/name", "awooop-worker"),
        ("awooop.dev/project", project),
    ]);
    let quantities = |pairs: &[(&str, &String)]| -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity((*v).clone())))
            .collect()
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    };
    let mut d = Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(project)),
            namespace: Some(namespace.to_string()),
            labels: Some(strings(&[
                ("app.kubernetes.io/name", "awooop-worker"),
                ("app.kubernetes.io/instance", project),
                ("app.kubernetes.io/managed-by", MANAGER),
                ("app.kubernetes.io/part-of", "awooop"),
                ("awooop.dev/project", project),
            ])),
            annotations: Some(strings(&[(
                "awooop.dev/revision-id",
                &ap.spec.revision_id.to_string(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "awooop.dev/v1alpha1".to_string(),
                kind: "AgentProject".to_string(),
                name: ap
                    .metadata
                    .name
                    .clone()
                    .unwrap_or_else(|| project.to_string()),
                uid: uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![Container {
                        name: "worker".to_string(),
                        image: Some(settings.image.clone()),
                        args: Some(vec!["worker".into(), "--project".into(), project.into()]),
                        env: Some(vec![
                            env("AWOOOP_WORKER_PROJECT", project),
                            env("AWOOOP_LOG_FORMAT", "json"),
                            // The only writable place (root filesystem is read-only).
                            env("AWOOOP_STATE_DIR", "/tmp/awooop"),
                            env(
                                "AWOOOP_APP_DATABASE_URL_FILE",
                                "/etc/awooop/database/database-url",
                            ),
                            // Per-project caps of the administrator (not the tenant's).
                            env("AWOOOP_WORKER_SLOTS", &limits.slots.to_string()),
                            env(
                                "AWOOOP_DB_MAX_CONNECTIONS",
                                &limits.db_max_connections.to_string(),
                            ),
                        ]),
                        resources: Some(ResourceRequirements {
                            requests: Some(quantities(&[
                                ("cpu", &limits.cpu_request),
                                ("memory", &limits.memory_request),
                            ])),
                            limits: Some(quantities(&[
                                ("cpu", &limits.cpu_limit),
                                ("memory", &limits.memory_limit),
                            ])),
                            ..Default::default()
                        }),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(false),
                            read_only_root_filesystem: Some(true),
                            run_as_non_root: Some(true),
                            capabilities: Some(Capabilities {
                                drop: Some(vec!["ALL".to_string()]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "tmp".to_string(),
                                mount_path: "/tmp".to_string(),
                                ..Default::default()
                            },
                            VolumeMount {
                                name: "database".to_string(),
                                mount_path: "/etc/awooop/database".to_string(),
                                read_only: Some(true),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "tmp".to_string(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                        Volume {
                            name: "database".to_string(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(settings.db_secret.clone()),
                                // 0440: the pod's user and group only, not a stdio child's uid.
                                default_mode: Some(0o440),
                                items: Some(vec![KeyToPath {
                                    key: "database-url".to_string(),
                                    path: "database-url".to_string(),
                                    ..Default::default()
                                }]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    if let Some(vol) = credentials_volume(credentials)
        && let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut())
    {
        let c = &mut pod.containers[0];
        c.env
            .get_or_insert_with(Vec::new)
            .push(env("AWOOOP_WORKER_CREDENTIALS_DIR", CREDENTIALS_DIR));
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "credentials".to_string(),
                mount_path: CREDENTIALS_DIR.to_string(),
                read_only: Some(true),
                ..Default::default()
            });
        pod.volumes.get_or_insert_with(Vec::new).push(vol);
    }
    // Serialising a typed Deployment cannot fail (string keys, no maps with non-string keys).
    let hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&d).unwrap_or_default().as_slice(),
    ));
    d.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH.to_string(), hash);
    d
}

/// Why a Deployment must be applied, or `None` when the cluster already has it.
///
/// Our desired state changed (new revision, new replica count) when the hash annotation
/// differs; the fields we own differ under an intact hash when someone edited or scaled the
/// Deployment by hand: that is drift, and PostgreSQL wins. Only fields we set are compared,
/// because the API server fills in defaults everywhere else.
pub fn needs_apply(existing: Option<&Deployment>, desired: &Deployment) -> Option<super::Why> {
    let Some(e) = existing else {
        return Some(super::Why::Create);
    };
    let hash = |d: &Deployment| {
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SPEC_HASH).cloned())
    };
    if hash(e) != hash(desired) {
        return Some(super::Why::Update);
    }
    if owned_fields(e) != owned_fields(desired) {
        return Some(super::Why::Drift);
    }
    None
}

fn owned_fields(d: &Deployment) -> serde_json::Value {
    let v = serde_json::to_value(d).unwrap_or_default();
    let pod = &v["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    json!([
        v["spec"]["replicas"],
        v["spec"]["selector"],
        pod["securityContext"],
        pod["automountServiceAccountToken"],
        c["image"],
        c["args"],
        c["env"],
        c["securityContext"],
    ])
}

/// Ready worker replicas of a Deployment, from its status.
pub fn ready_replicas(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Why;

    fn bounds(min: i32, max: i32, per: i32) -> WorkerBounds {
        WorkerBounds {
            min_replicas: min,
            max_replicas: max,
            runs_per_replica: per,
        }
    }

    #[test]
    fn replicas_follow_queue_depth_within_bounds() {
        for (b, depth, want) in [
            (bounds(0, 5, 10), 0, 0),
            (bounds(1, 5, 10), 0, 1),
            (bounds(1, 5, 10), 1, 1),
            (bounds(1, 5, 10), 10, 1),
            (bounds(1, 5, 10), 11, 2),
            (bounds(1, 5, 10), 45, 5),
            (bounds(1, 5, 10), 10_000, 5),
            (bounds(2, 4, 1), 3, 3),
            (bounds(0, 1, 0), 7, 1),
            (bounds(3, 3, 10), -5, 3),
        ] {
            assert_eq!(desired_replicas(&b, depth), want, "{b:?} depth {depth}");
        }
    }

    fn ap() -> AgentProject {
        use crate::crd::AgentProjectSpec;
        AgentProject::new(
            "alpha",
            AgentProjectSpec {
                project_id: "alpha".into(),
                revision_id: "r1".into(),
                revision: 1,
                body_hash: "sha256:00".into(),
                mode: "shadow".into(),
                workers: bounds(1, 4, 10),
            },
        )
    }

    fn settings() -> WorkerSettings {
        WorkerSettings {
            image: "ghcr.io/awooop/awooop:1".into(),
            db_secret: "awooop-db".into(),
            limits: WorkerLimits::default(),
        }
    }

    #[test]
    fn administrator_limits_cap_replicas_and_size_the_pods() {
        let mut s = settings();
        s.limits.max_replicas = 2;
        s.limits.slots = 4;
        s.limits.db_max_connections = 3;
        let v = serde_json::to_value(deployment("ns", &ap(), "uid-1", &s, 9, &[])).unwrap();
        assert_eq!(v["spec"]["replicas"], 2, "the contract asked for 9");
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        let env = |n: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == n)
                .map(|e| e["value"].clone())
        };
        assert_eq!(env("AWOOOP_WORKER_SLOTS"), Some(serde_json::json!("4")));
        assert_eq!(
            env("AWOOOP_DB_MAX_CONNECTIONS"),
            Some(serde_json::json!("3"))
        );
        assert_eq!(c["resources"]["requests"]["cpu"], "100m");
        assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    }

    #[test]
    fn deployment_is_hardened_owned_and_takes_the_database_url_from_a_secret() {
        let d = deployment("ns", &ap(), "uid-1", &settings(), 3, &[]);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["metadata"]["name"], "awooop-worker-alpha");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(v["spec"]["replicas"], 3);
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0];
        assert_eq!(
            c["args"],
            serde_json::json!(["worker", "--project", "alpha"])
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(
            c["securityContext"]["capabilities"]["drop"],
            serde_json::json!(["ALL"])
        );
        let env = c["env"].as_array().unwrap();
        assert!(
            env.iter()
                .all(|e| e["name"] != "DATABASE_URL" && e["name"] != "AWOOOP_APP_DATABASE_URL"),
            "no database URL in the environment of a pod that starts children"
        );
        let file = env
            .iter()
            .find(|e| e["name"] == "AWOOOP_APP_DATABASE_URL_FILE")
            .unwrap();
        assert_eq!(file["value"], "/etc/awooop/database/database-url");
        let vol = &v["spec"]["template"]["spec"]["volumes"][1];
        assert_eq!(vol["secret"]["secretName"], "awooop-db");
        assert_eq!(vol["secret"]["items"][0]["key"], "database-url");
        assert_eq!(vol["secret"]["defaultMode"], 0o440);
    }

    #[test]
    fn credentials_are_mounted_from_exactly_the_resolved_refs() {
        let r = |n: &str, k: &str| SecretKeyRef {
            name: n.into(),
            key: k.into(),
        };
        let none = serde_json::to_value(deployment("ns", &ap(), "u", &settings(), 1, &[])).unwrap();
        assert_eq!(
            none["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .len(),
            2,
            "no credential volume without refs"
        );
        let refs = [
            r("k8s-mcp", "token"),
            r("k8s-mcp", "ca.crt"),
            r("prom", "key"),
        ];
        let d = deployment("ns", &ap(), "u", &settings(), 1, &refs);
        let v = serde_json::to_value(&d).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let vol = &pod["volumes"][2];
        assert_eq!(vol["name"], "credentials");
        assert_eq!(vol["projected"]["defaultMode"], 0o440);
        assert_eq!(
            vol["projected"]["sources"],
            serde_json::json!([
                {"secret": {"name": "k8s-mcp", "optional": true, "items": [
                    {"key": "token", "path": "k8s-mcp/token"},
                    {"key": "ca.crt", "path": "k8s-mcp/ca.crt"}]}},
                {"secret": {"name": "prom", "optional": true, "items": [
                    {"key": "key", "path": "prom/key"}]}}
            ])
        );
        let c = &pod["containers"][0];
        assert!(
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "credentials"
                    && m["mountPath"] == CREDENTIALS_DIR
                    && m["readOnly"] == true)
        );
        assert!(
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "AWOOOP_WORKER_CREDENTIALS_DIR"
                    && e["value"] == CREDENTIALS_DIR)
        );
        // A new set of refs is a new desired state (a rollout), not drift.
        let fewer = deployment("ns", &ap(), "u", &settings(), 1, &refs[..1]);
        assert_eq!(needs_apply(Some(&d), &fewer), Some(Why::Update));
    }

    #[test]
    fn apply_is_needed_on_create_change_and_manual_scaling_only() {
        let want = deployment("ns", &ap(), "uid-1", &settings(), 2, &[]);
        assert_eq!(needs_apply(None, &want), Some(Why::Create));
        assert_eq!(needs_apply(Some(&want), &want), None);
        let more = deployment("ns", &ap(), "uid-1", &settings(), 3, &[]);
        assert_eq!(needs_apply(Some(&want), &more), Some(Why::Update));
        let mut scaled = want.clone();
        scaled.spec.as_mut().unwrap().replicas = Some(9);
        assert_eq!(needs_apply(Some(&scaled), &want), Some(Why::Drift));
        let mut edited = want.clone();
        edited
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("evil:latest".into());
        assert_eq!(needs_apply(Some(&edited), &want), Some(Why::Drift));
    }
}
