//! `awooop apply` and `awooop project onboard`: thin shells over [`crate::apply`].

use super::output::{self, Style};
use super::*;
use crate::control::apply::{ApplyOptions, Header};

fn options(a: &ApproveArgs) -> ApplyOptions {
    ApplyOptions {
        actor: a.actor.clone(),
        key_id: a.key_id.clone(),
        approvals: crate::apply::approvals(a),
    }
}

pub(super) async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let flags = Header {
        project: args.project.clone(),
        kind: args.kind.clone(),
        name: args.name.clone(),
    };
    // Files are read and checked before anything connects: a typo fails at once.
    let docs = crate::apply::load(&args.files, &flags)?;
    let p = Platform::connect(&args.db, Some(&args.redis), Some(&args.keyring)).await?;
    let keyring_file = keyring_path(Some(&args.keyring), &p.state_dir);
    let (artifacts, applied) =
        crate::apply::apply_docs(&p, &keyring_file, docs, &options(&args.approve)).await?;
    // The JSON and name forms list contracts (as before artifacts were registered here); the
    // text form says what happened to the artifacts too.
    output::emit(
        &args.output,
        Style::Text,
        &applied,
        || applied.iter().map(|a| a.reference()).collect(),
        || {
            artifacts
                .iter()
                .map(|a| a.summary())
                .chain(applied.iter().map(|a| a.summary()))
                .collect()
        },
    )
}

pub(super) async fn onboard(
    db: DbArgs,
    keyring: KeyringArgs,
    redis: RedisArgs,
    from: &Path,
    project: Option<&str>,
    approve: &ApproveArgs,
    out: &OutputArgs,
) -> anyhow::Result<()> {
    let p = Platform::connect(&db, Some(&redis), Some(&keyring)).await?;
    let keyring_file = keyring_path(Some(&keyring), &p.state_dir);
    let done = crate::apply::onboard(&p, &keyring_file, from, project, &options(approve)).await?;
    output::emit(
        out,
        Style::Text,
        &done,
        || {
            std::iter::once(format!("project/{}", done.project))
                .chain(done.contracts.iter().map(|a| a.reference()))
                .collect()
        },
        || done.lines(),
    )
}
