//! An envtest-style Kubernetes control plane for tests (as controller-runtime's `envtest`):
//! `etcd` and `kube-apiserver` from the folder in `KUBEBUILDER_ASSETS`, on free loopback ports,
//! with their own certificates (the API server's self-signed serving pair, a fresh RSA key for
//! service-account tokens), a static token file for the administrator, and RBAC authorization.
//! [`KubeEnv::start`] installs the CRDs (`crds/`) and the chart's ServiceAccounts, RBAC and
//! admission policies (rendered by `helm template`), and hands out clients: the
//! administrator's, and one per ServiceAccount token (`TokenRequest`), so the controller runs
//! with exactly the chart's rights.
//!
//! The binaries come from a folder (the envtest convention is `KUBEBUILDER_ASSETS`; see
//! [`assets`] and docs/kubernetes.md). Everything lives in a temporary folder and both
//! processes are killed when the `KubeEnv` drops. Used by the integration tests
//! (`tests/integration/apiserver.rs`) and `awooop bench projection --apiserver`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::{Value, json};

pub const NS: &str = "awooop";
/// The chart's release name in these tests: the operator's ServiceAccount is
/// `awooop-operator`, its user `system:serviceaccount:awooop:awooop-operator`.
pub const RELEASE: &str = "awooop";
pub const OPERATOR_SA: &str = "awooop-operator";
const ADMIN_TOKEN: &str = "envtest-admin-token-0123456789abcdef";

pub struct KubeEnv {
    dir: PathBuf,
    etcd: Child,
    apiserver: Child,
    pub url: String,
    ca: PathBuf,
    /// The administrator (group system:masters).
    pub admin: kube::Client,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The repository (this crate is operator/testkit).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("operator/testkit has a grandparent")
        .to_path_buf()
}

/// The folder with `kube-apiserver` and `etcd`: `KUBEBUILDER_ASSETS` (as envtest).
pub fn assets() -> Option<PathBuf> {
    std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from)
}

/// What to install besides the CRDs: the chart's ServiceAccounts and RBAC (rendered with
/// `helm`), and optionally its admission policies.
#[derive(Debug, Clone)]
pub struct Chart {
    pub helm: PathBuf,
    pub admission_policy: bool,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `helm`: `$AWOOOP_HELM`, `.tools/bin/helm` (scripts/chart-test.sh installs it), or PATH.
pub fn helm() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AWOOOP_HELM") {
        return Some(PathBuf::from(p));
    }
    let tools = repo_root().join(".tools/bin/helm");
    if tools.exists() {
        return Some(tools);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("helm"))
            .find(|p| p.exists())
    })
}

impl KubeEnv {
    /// Start etcd and kube-apiserver from `assets`, install the CRDs and (with `chart`) the
    /// chart's ServiceAccounts, RBAC and admission policies.
    pub async fn start(assets: &Path, chart: Option<Chart>) -> Self {
        awooop_core::tls::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!(
            "awooop-envtest-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        // Service-account token signing key (the API server verifies with the same file).
        let sa_key = dir.join("sa.key");
        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .stderr(Stdio::null()));
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},envtest-admin,envtest-admin-uid,\"system:masters\"\n"),
        )
        .unwrap();

        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let etcd = Command::new(assets.join("etcd"))
            .arg("--name=envtest")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=envtest=http://127.0.0.1:{peer_port}"
            ))
            // Test data: no fsync (etcd 3.4.9+).
            .arg("--unsafe-no-fsync")
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}/etcd: {e}", assets.display()));
        let api_log = std::fs::File::create(dir.join("apiserver.log")).unwrap();
        let apiserver = Command::new(assets.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .arg(format!("--secure-port={api_port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
                // No controller manager here: nothing would create the default ServiceAccount.
                "--disable-admission-plugins=ServiceAccount",
                "--enable-priority-and-fairness=false",
            ])
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg(format!("--service-account-key-file={}", sa_key.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .stdout(Stdio::null())
            .stderr(api_log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}/kube-apiserver: {e}", assets.display()));
        let url = format!("https://127.0.0.1:{api_port}");
        // The serving certificate (and its CA) the API server generates at start.
        let ca = dir.join("certs/apiserver.crt");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ca.exists() {
            assert!(
                Instant::now() < deadline,
                "kube-apiserver wrote no certificate: {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut env = KubeEnv {
            admin: client_for(&url, &ca, ADMIN_TOKEN).await,
            dir,
            etcd,
            apiserver,
            url,
            ca,
        };
        env.wait_ready(deadline).await;
        env.install(chart.as_ref()).await;
        env
    }

    async fn wait_ready(&mut self, deadline: Instant) {
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if let Ok(text) = self.admin.request_text(req).await
                && text.trim() == "ok"
            {
                return;
            }
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                panic!(
                    "kube-apiserver exited ({status}); log: {}",
                    self.dir.join("apiserver.log").display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready within 60 s; log: {}",
                self.dir.join("apiserver.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Server-side apply any object (as the administrator, field manager `envtest`).
    pub async fn apply(&self, obj: &Value) -> DynamicObject {
        let gvk = GroupVersionKind::try_from(&kube::api::TypeMeta {
            api_version: obj["apiVersion"].as_str().unwrap().into(),
            kind: obj["kind"].as_str().unwrap().into(),
        })
        .unwrap();
        let (ar, caps) = discovery::pinned_kind(&self.admin, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discover {gvk:?}: {e}"));
        let name = obj["metadata"]["name"].as_str().unwrap();
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(self.admin.clone(), &ar),
            Scope::Namespaced => Api::namespaced_with(
                self.admin.clone(),
                obj["metadata"]["namespace"].as_str().unwrap_or(NS),
                &ar,
            ),
        };
        api.patch(
            name,
            &PatchParams::apply("envtest").force(),
            &Patch::Apply(obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {gvk:?} {name}: {e}"))
    }

    async fn install(&self, chart: Option<&Chart>) {
        // CRDs (generated from the Rust types, equal to crds/ by a drift test).
        for (_, text) in awooop_k8s::crd::crd_files() {
            let crd: Value = serde_saphyr::from_str(&text).expect("CRD YAML");
            self.apply(&crd).await;
        }
        self.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
            .await;
        if let Some(chart) = chart {
            let mut templates = vec!["templates/serviceaccounts.yaml", "templates/rbac.yaml"];
            if chart.admission_policy {
                templates.push("templates/admission-policy.yaml");
            }
            let mut cmd = Command::new(&chart.helm);
            cmd.args(["template", RELEASE])
                .arg(repo_root().join("charts/awooop"))
                .args(["-n", NS]);
            for t in &templates {
                cmd.args(["--show-only", t]);
            }
            let rendered = run(&mut cmd);
            for doc in rendered.split("\n---") {
                let v: Value = match serde_saphyr::from_str(doc) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if v.is_object() && v.get("kind").is_some() {
                    self.apply(&v).await;
                }
            }
        }
        // The CRDs serve once Established; the namespace's ServiceAccounts exist.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ap = Api::<awooop_k8s::crd::AgentProject>::namespaced(self.admin.clone(), NS);
            let mg = Api::<awooop_k8s::crd::McpGrant>::namespaced(self.admin.clone(), NS);
            if ap.list(&Default::default()).await.is_ok()
                && mg.list(&Default::default()).await.is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "CRDs never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Api::<Namespace>::all(self.admin.clone())
            .get(NS)
            .await
            .expect("namespace exists");
    }

    /// A client authenticated as a ServiceAccount of the namespace (a `TokenRequest` token).
    pub async fn client_as(&self, service_account: &str) -> kube::Client {
        let tr = Api::<ServiceAccount>::namespaced(self.admin.clone(), NS)
            .create_token_request(
                service_account,
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![],
                        expiration_seconds: Some(3600),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("token for {service_account}: {e}"));
        let token = tr.status.expect("token in status").token;
        client_for(&self.url, &self.ca, &token).await
    }

    /// A ServiceAccount that is not in the chart (a user without rights).
    pub async fn create_service_account(&self, name: &str) {
        self.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": NS}}))
            .await;
    }

    /// GET `path` in the Table format (what `kubectl get` prints).
    pub async fn table(&self, path: &str) -> Value {
        let req = http::Request::get(path)
            .header(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(Vec::new())
            .unwrap();
        let text = self.admin.request_text(req).await.unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

async fn client_for(url: &str, ca: &Path, token: &str) -> kube::Client {
    use kube::config::{
        AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
        NamedContext,
    };
    let kc = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "envtest".into(),
            cluster: Some(Cluster {
                server: Some(url.into()),
                certificate_authority: Some(ca.display().to_string()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "user".into(),
            auth_info: Some(AuthInfo {
                token: Some(token.to_string().into()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "envtest".into(),
            context: Some(Context {
                cluster: "envtest".into(),
                user: Some("user".into()),
                namespace: Some(NS.into()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("envtest".into()),
        ..Default::default()
    };
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        if std::thread::panicking() {
            eprintln!("envtest logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
