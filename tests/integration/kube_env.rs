//! The real-API-server tests' entry: `awooop_testkit::envtest` with the binaries from
//! `KUBEBUILDER_ASSETS` and the chart installed, or a skip in one line when the variable is not
//! set (CI machines without the binaries still pass; `scripts/test.sh` exports it when it finds
//! them, see docs/kubernetes.md). The skip is recorded in the skip log but never fails the run,
//! even under `scripts/test.sh`: the binaries are built from source and optional.

use awooop_testkit::envtest::{self, Chart};
pub use awooop_testkit::envtest::{KubeEnv, NS, OPERATOR_SA};

/// Start the API server with the chart's RBAC (and `admission_policy`), or skip.
pub async fn start(admission_policy: bool) -> Option<KubeEnv> {
    let Some(assets) = envtest::assets() else {
        let test = std::thread::current()
            .name()
            .unwrap_or("unknown test")
            .to_string();
        eprintln!(
            "SKIPPED {test}: KUBEBUILDER_ASSETS is not set (a folder with kube-apiserver and etcd; see docs/kubernetes.md)"
        );
        return None;
    };
    let helm = crate::support::require_tool(
        "helm",
        "scripts/chart-test.sh installs .tools/bin/helm; or set AWOOOP_HELM",
        envtest::helm(),
    )?;
    Some(
        KubeEnv::start(
            &assets,
            Some(Chart {
                helm,
                admission_policy,
            }),
        )
        .await,
    )
}
