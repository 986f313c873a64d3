//! `awooop catalog …` and `awooop egress …`: the administrator's platform policy (the stdio
//! catalog and the egress allow-list, crate `awooop-policy`), written in platform scope.

use super::*;

pub(super) async fn catalog(cmd: CatalogCmd) -> anyhow::Result<()> {
    let actor = "cli";
    match cmd {
        CatalogCmd::Add {
            db,
            name,
            command,
            args,
            env,
            description,
            output,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let e = awooop_policy::catalog::CatalogEntry {
                name,
                command,
                args,
                env_allow: env,
                description: description.unwrap_or_default(),
            };
            let v = awooop_policy::catalog_put(p.control.db(), actor, &e).await?;
            super::output::emit_one(&output, &v, |v| v.name.clone())
        }
        CatalogCmd::List { db } => {
            let p = Platform::connect(&db, None, None).await?;
            print(&awooop_policy::catalog_list(p.control.db(), actor).await?)
        }
        CatalogCmd::Remove { db, name } => {
            let p = Platform::connect(&db, None, None).await?;
            let removed = awooop_policy::catalog_remove(p.control.db(), actor, &name).await?;
            print(&serde_json::json!({"name": name, "removed": removed}))
        }
    }
}

pub(super) async fn egress(cmd: EgressCmd) -> anyhow::Result<()> {
    let actor = "cli";
    match cmd {
        EgressCmd::Allow {
            db,
            project,
            all_projects,
            host,
            note,
            output,
        } => {
            if project.is_some() == all_projects {
                return Err(Error::new(
                    ErrorCode::EgressRuleInvalid,
                    "give exactly one of --project P and --all-projects",
                )
                .into());
            }
            let p = Platform::connect(&db, None, None).await?;
            let v = awooop_policy::egress_allow(
                p.control.db(),
                actor,
                project.as_deref(),
                &host,
                note.as_deref().unwrap_or(""),
            )
            .await?;
            super::output::emit_one(&output, &v, |v| v.rule_id.to_string())
        }
        EgressCmd::List { db } => {
            let p = Platform::connect(&db, None, None).await?;
            print(&awooop_policy::egress_list(p.control.db(), actor).await?)
        }
        EgressCmd::Remove { db, rule_id } => {
            let p = Platform::connect(&db, None, None).await?;
            let removed = awooop_policy::egress_remove(p.control.db(), actor, rule_id).await?;
            print(&serde_json::json!({"rule_id": rule_id, "removed": removed}))
        }
    }
}
