//! Watched caches of the cluster (kube-runtime reflectors) for the controller loop, so a
//! project's reconcile reads its slice of the cluster from memory instead of LISTing by label:
//! its cost no longer grows with the namespace.
//!
//! Four reflectors: AgentProjects, McpGrants and Deployments carrying the managed-by label, and
//! Secrets carrying `awooop.dev/project`. Each [`Store`] is indexed by the `awooop.dev/project`
//! label (project → names), kept in step with the store: an index update follows each watch
//! event the reflector has applied, and a re-list swaps the whole index at `InitDone`, as the
//! store does.
//!
//! The same watch events are the controller's triggers ([`Trigger`]): a change of a projected
//! object reconciles its project (drift is restored at once), and a change of a labelled Secret
//! (created, labelled, unlabelled, data rotated, deleted) reconciles the project it is labelled
//! for and every project whose McpGrants reference it, so SecretsResolved follows within a
//! watch round-trip instead of the next resync. Initial listings trigger nothing: the
//! start-up resync covers what exists.
//!
//! Secret values never enter the cache: a stream modifier empties every value before the
//! reflector stores the object (only key names are needed), and drops managed fields.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::mpsc::UnboundedSender;

use super::fetch::{Cluster, SecretInfo, project_of};
use super::{MANAGED_SELECTOR, PROJECT_LABEL};
use crate::crd::{AgentProject, McpGrant};
use awooop_store::tenancy::ProjectId;

/// Why a project is reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// One of its projected objects changed (or was deleted).
    Object,
    /// A Secret labelled for it, or referenced by its grants, changed.
    Secret,
    /// A new revision was activated (LISTEN/NOTIFY).
    Activation,
    /// A failed reconcile's backoff ran out.
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Object => "object",
            Trigger::Secret => "secret",
            Trigger::Activation => "activation",
            Trigger::Retry => "retry",
        }
    }
}

type ByProject = HashMap<String, BTreeSet<String>>;
type ProjectOf = HashMap<String, String>;

/// project → names, and name → project, for one kind.
#[derive(Default)]
struct Index {
    by_project: ByProject,
    project_of: ProjectOf,
    /// Filled during a re-list, swapped in at `InitDone`.
    buffer: Option<(ByProject, ProjectOf)>,
}

impl Index {
    fn insert(
        by_project: &mut ByProject,
        project_of: &mut ProjectOf,
        name: &str,
        project: Option<&str>,
    ) {
        if let Some(old) = project_of.remove(name)
            && let Some(set) = by_project.get_mut(&old)
        {
            set.remove(name);
            if set.is_empty() {
                by_project.remove(&old);
            }
        }
        if let Some(p) = project {
            project_of.insert(name.to_string(), p.to_string());
            by_project
                .entry(p.to_string())
                .or_default()
                .insert(name.to_string());
        }
    }

    fn apply<K: Resource>(&mut self, ev: &watcher::Event<K>) {
        let key = |o: &K| {
            (
                o.meta().name.clone().unwrap_or_default(),
                project_of(o.meta()).map(str::to_string),
            )
        };
        match ev {
            watcher::Event::Init => self.buffer = Some(Default::default()),
            watcher::Event::InitApply(o) => {
                let (name, project) = key(o);
                let (b, p) = self.buffer.get_or_insert_with(Default::default);
                Self::insert(b, p, &name, project.as_deref());
            }
            watcher::Event::InitDone => {
                if let Some((b, p)) = self.buffer.take() {
                    self.by_project = b;
                    self.project_of = p;
                }
            }
            watcher::Event::Apply(o) => {
                let (name, project) = key(o);
                Self::insert(
                    &mut self.by_project,
                    &mut self.project_of,
                    &name,
                    project.as_deref(),
                );
            }
            watcher::Event::Delete(o) => {
                let (name, _) = key(o);
                Self::insert(&mut self.by_project, &mut self.project_of, &name, None);
            }
        }
    }
}

/// A reflector store with its project index.
struct Indexed<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    index: Arc<RwLock<Index>>,
    namespace: String,
}

impl<K> Indexed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// The objects labelled for `project`.
    fn of(&self, project: &str) -> Vec<K> {
        let index = self.index.read().expect("index lock");
        index
            .by_project
            .get(project)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                self.store
                    .get(&ObjectRef::new(name).within(&self.namespace))
            })
            .map(|o| (*o).clone())
            .collect()
    }

    fn all(&self) -> Vec<K> {
        self.store.state().iter().map(|o| (**o).clone()).collect()
    }
}

/// The controller's watched caches. Dropping it stops the watches.
pub struct Caches {
    projects: Indexed<AgentProject>,
    grants: Indexed<McpGrant>,
    deployments: Indexed<Deployment>,
    secrets: Indexed<Secret>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Caches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Keep the key names of a Secret, drop its values (and the managed fields).
fn strip(s: &mut Secret) {
    for v in s.data.iter_mut().flat_map(|d| d.values_mut()) {
        *v = ByteString(Vec::new());
    }
    if let Some(d) = s.string_data.as_mut() {
        for v in d.values_mut() {
            v.clear();
        }
    }
    s.metadata.managed_fields = None;
}

impl Caches {
    /// Start the four reflectors; triggers go to `tx`. Wait for [`Caches::ready`] before
    /// reading.
    pub fn start(
        client: Client,
        namespace: &str,
        tx: UnboundedSender<(ProjectId, Trigger)>,
    ) -> Self {
        let managed = watcher::Config::default().labels(MANAGED_SELECTOR);
        let mut tasks = Vec::new();
        let (projects, t) = spawn::<AgentProject>(&client, namespace, managed.clone(), {
            let tx = tx.clone();
            move |ev| trigger_object(&tx, ev)
        });
        tasks.push(t);
        let (deployments, t) = spawn::<Deployment>(&client, namespace, managed.clone(), {
            let tx = tx.clone();
            move |ev| trigger_object(&tx, ev)
        });
        tasks.push(t);
        let (grants, t) = spawn::<McpGrant>(&client, namespace, managed, {
            let tx = tx.clone();
            move |ev| trigger_object(&tx, ev)
        });
        tasks.push(t);
        // Secret events reconcile the projects whose grants reference the Secret: read from
        // the grants' store (a scan; Secret changes are rare next to reconciles).
        let grant_store = grants.store.clone();
        let (secrets, t) = spawn_secrets(
            &client,
            namespace,
            watcher::Config::default().labels(PROJECT_LABEL),
            move |ev| trigger_secret(&tx, &grant_store, ev),
        );
        tasks.push(t);
        Self {
            projects,
            grants,
            deployments,
            secrets,
            tasks,
        }
    }

    /// Wait until every reflector has listed once.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.projects.store.wait_until_ready().await?;
        self.grants.store.wait_until_ready().await?;
        self.deployments.store.wait_until_ready().await?;
        self.secrets.store.wait_until_ready().await
    }

    /// One project's slice of the cluster, from memory.
    pub fn slice(&self, project: &str) -> Cluster {
        Cluster {
            projects: self.projects.of(project),
            grants: self.grants.of(project),
            deployments: self.deployments.of(project),
            secrets: self
                .secrets
                .of(project)
                .iter()
                .map(|s| {
                    (
                        s.metadata.name.clone().unwrap_or_default(),
                        SecretInfo::of(s),
                    )
                })
                .collect(),
            from_cache: true,
        }
    }

    /// The whole namespace (for a resync), from memory.
    pub fn all(&self) -> Cluster {
        Cluster {
            projects: self.projects.all(),
            grants: self.grants.all(),
            deployments: self.deployments.all(),
            secrets: self
                .secrets
                .all()
                .iter()
                .map(|s| {
                    (
                        s.metadata.name.clone().unwrap_or_default(),
                        SecretInfo::of(s),
                    )
                })
                .collect(),
            from_cache: true,
        }
    }
}

fn send(tx: &UnboundedSender<(ProjectId, Trigger)>, project: &str, why: Trigger) {
    if let Ok(p) = ProjectId::parse(project) {
        let _ = tx.send((p, why));
    }
}

fn trigger_object<K: Resource>(tx: &UnboundedSender<(ProjectId, Trigger)>, ev: &watcher::Event<K>) {
    if let watcher::Event::Apply(o) | watcher::Event::Delete(o) = ev
        && let Some(p) = project_of(o.meta())
    {
        send(tx, p, Trigger::Object);
    }
}

/// The projects a Secret event concerns: the one it is labelled for, and those whose grants
/// reference it by name (a Secret labelled for another project, or unlabelled, turns their
/// SecretsResolved False).
fn trigger_secret(
    tx: &UnboundedSender<(ProjectId, Trigger)>,
    grants: &Store<McpGrant>,
    ev: &watcher::Event<Secret>,
) {
    let (watcher::Event::Apply(s) | watcher::Event::Delete(s)) = ev else {
        return;
    };
    let name = s.metadata.name.as_deref().unwrap_or_default();
    let mut projects: BTreeSet<String> = project_of(&s.metadata)
        .map(str::to_string)
        .into_iter()
        .collect();
    for g in grants.state() {
        if g.spec.credential_refs.iter().any(|r| r.name == name) {
            projects.insert(g.spec.project_id.clone());
        }
    }
    for p in projects {
        send(tx, &p, Trigger::Secret);
    }
}

fn spawn<K>(
    client: &Client,
    namespace: &str,
    cfg: watcher::Config,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Indexed<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api = Api::<K>::namespaced(client.clone(), namespace);
    run_reflector(watcher(api, cfg), namespace, on_event)
}

fn spawn_secrets(
    client: &Client,
    namespace: &str,
    cfg: watcher::Config,
    on_event: impl Fn(&watcher::Event<Secret>) + Send + 'static,
) -> (Indexed<Secret>, tokio::task::JoinHandle<()>) {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    run_reflector(watcher(api, cfg).modify(strip), namespace, on_event)
}

fn run_reflector<K, S>(
    stream: S,
    namespace: &str,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Indexed<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    let index = Arc::new(RwLock::new(Index::default()));
    let stream = reflector::reflector(writer, stream).default_backoff();
    let idx = index.clone();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    // The reflector has applied the event to the store; the index follows
                    // before anyone is told, so a triggered reconcile sees both.
                    idx.write().expect("index lock").apply(&ev);
                    on_event(&ev);
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&()), "watch failed; retrying")
                }
            }
        }
    });
    (
        Indexed {
            store,
            index,
            namespace: namespace.to_string(),
        },
        task,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn secret(name: &str, project: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: project.map(|p| BTreeMap::from([(PROJECT_LABEL.to_string(), p.into())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "token".to_string(),
                ByteString(b"value".to_vec()),
            )])),
            ..Default::default()
        }
    }

    fn names(i: &Index, p: &str) -> Vec<String> {
        i.by_project
            .get(p)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn index_follows_labels_deletes_and_relists() {
        let mut i = Index::default();
        i.apply(&watcher::Event::Apply(secret("a", Some("alpha"))));
        i.apply(&watcher::Event::Apply(secret("b", Some("alpha"))));
        assert_eq!(names(&i, "alpha"), ["a", "b"]);
        // Relabelled to another project: moves.
        i.apply(&watcher::Event::Apply(secret("a", Some("beta"))));
        assert_eq!(names(&i, "alpha"), ["b"]);
        assert_eq!(names(&i, "beta"), ["a"]);
        i.apply(&watcher::Event::Delete(secret("b", Some("alpha"))));
        assert!(names(&i, "alpha").is_empty());
        // A re-list replaces everything at InitDone, not before.
        i.apply(&watcher::Event::<Secret>::Init);
        i.apply(&watcher::Event::InitApply(secret("c", Some("gamma"))));
        assert_eq!(names(&i, "beta"), ["a"], "old index serves until InitDone");
        i.apply(&watcher::Event::<Secret>::InitDone);
        assert!(names(&i, "beta").is_empty());
        assert_eq!(names(&i, "gamma"), ["c"]);
    }

    #[test]
    fn cached_secrets_keep_key_names_only() {
        let mut s = secret("a", Some("alpha"));
        s.string_data = Some(BTreeMap::from([("other".to_string(), "v".to_string())]));
        strip(&mut s);
        let info = SecretInfo::of(&s);
        assert_eq!(
            info.keys,
            BTreeSet::from(["token".to_string(), "other".to_string()])
        );
        assert!(s.data.unwrap().values().all(|v| v.0.is_empty()));
        assert!(s.string_data.unwrap().values().all(String::is_empty));
    }
}
