//! `awooop run create|get|list|wait|cancel` and `awooop audit tail`: the same services as
//! `/v1/platform/runs` and `/v1/control/audit`, with the database credentials (an operator's
//! tool, like the other commands).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::output::emit_one;
use super::*;
use crate::runtime::{CreateRun, ListQuery, RunDetail, RunService};

/// A command's chosen exit code (not an error to print): `run wait` ends with 3 when the run
/// did not succeed and 4 on timeout.
#[derive(Debug)]
pub(crate) struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// `--input`: inline JSON, `@FILE`, or `-` for standard input.
fn read_input(s: &str) -> anyhow::Result<Value> {
    let text = if s == "-" {
        let mut t = String::new();
        std::io::stdin().read_to_string(&mut t)?;
        t
    } else if let Some(f) = s.strip_prefix('@') {
        std::fs::read_to_string(f).with_context(|| format!("cannot read {f}"))?
    } else {
        s.to_string()
    };
    Ok(http::extract::parse_json(text.as_bytes())?)
}

pub(super) async fn run_cmd(cmd: RunCmd) -> anyhow::Result<()> {
    match cmd {
        RunCmd::Create {
            db,
            project,
            agent,
            input,
            mode,
            idempotency_key,
            wait,
            actor,
            output,
        } => {
            let input = read_input(&input)?;
            let p = Platform::connect(&db, None, None).await?;
            let project = ProjectId::parse(&project)?;
            let runs = RunService::new(p.control.clone());
            let req = CreateRun {
                agent,
                input,
                mode,
                reply_to: None,
            };
            let accepted = tenancy::scope(
                project.clone(),
                runs.create(&Actor::cli(&actor), req, idempotency_key.as_deref(), None),
            )
            .await?;
            if wait {
                // The id first (scripts), then the run as it happens.
                if !output.quiet {
                    eprintln!(
                        "run {} created (trace {})",
                        accepted.run_id, accepted.trace_id
                    );
                }
                return follow(&runs, &project, accepted.run_id, 300, output.quiet).await;
            }
            emit_one(&output, &accepted, |a| a.run_id.to_string())
        }
        RunCmd::Get {
            db,
            project,
            run_id,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let runs = RunService::new(p.control.clone());
            let id = run_uuid(&run_id)?;
            print(&tenancy::scope(ProjectId::parse(&project)?, runs.get(id)).await?)
        }
        RunCmd::List {
            db,
            project,
            state,
            agent,
            limit,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let runs = RunService::new(p.control.clone());
            let q = ListQuery {
                state,
                agent,
                limit: Some(limit),
                cursor: None,
            };
            let page = tenancy::scope(ProjectId::parse(&project)?, runs.list(q)).await?;
            print(&page)
        }
        RunCmd::Wait {
            db,
            project,
            run_id,
            timeout_seconds,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let runs = RunService::new(p.control.clone());
            let id = run_uuid(&run_id)?;
            follow(
                &runs,
                &ProjectId::parse(&project)?,
                id,
                timeout_seconds,
                false,
            )
            .await
        }
        RunCmd::Cancel {
            db,
            project,
            run_id,
            actor,
        } => {
            let p = Platform::connect(&db, None, None).await?;
            let runs = RunService::new(p.control.clone());
            let id = run_uuid(&run_id)?;
            print(
                &tenancy::scope(
                    ProjectId::parse(&project)?,
                    runs.cancel(&Actor::cli(&actor), id),
                )
                .await?,
            )
        }
    }
}

fn run_uuid(s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s).map_err(|_| Error::new(ErrorCode::RunNotFound, "run not found"))
}

/// One journal step as a line.
fn step_line(s: &crate::runtime::StepView) -> String {
    let ms = (s.finished_at - s.started_at).num_milliseconds();
    let mut l = format!(
        "  step {} {} {}: {} ({ms} ms, attempt {})",
        s.step_index, s.step_type, s.step_key, s.status, s.attempt
    );
    if let Some(c) = &s.error_code {
        l.push_str(&format!(" {c}"));
    }
    l
}

/// Follow a run until it ends: every new journal step as a line, state changes as lines, a
/// progress line (rewritten in place on a terminal) while it runs, the run's result at the
/// end. Polls the run once every 200 ms (the journal is the source of truth; no extra
/// machinery is needed for one human watching).
async fn follow(
    runs: &RunService,
    project: &ProjectId,
    id: Uuid,
    timeout_seconds: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_seconds);
    let tty = std::io::stderr().is_terminal();
    let mut shown = 0usize;
    let mut last_state = String::new();
    loop {
        let d: RunDetail = tenancy::scope(project.clone(), runs.get(id)).await?;
        if !quiet {
            if d.run.state != last_state {
                if tty {
                    eprint!("\r\x1b[K");
                }
                println!("run {id}: {}", d.run.state);
                last_state = d.run.state.clone();
            }
            for s in d.steps.iter().skip(shown) {
                if tty {
                    eprint!("\r\x1b[K");
                }
                println!("{}", step_line(s));
            }
        }
        shown = d.steps.len();
        let state = crate::runtime::RunState::parse(&d.run.state)?;
        if state.is_terminal() {
            if !quiet {
                if tty {
                    eprint!("\r\x1b[K");
                }
                println!(
                    "run {id} {} after {:.1} s, {} step(s)",
                    d.run.state,
                    started.elapsed().as_secs_f64(),
                    shown
                );
                if let Some(out) = &d.run.output {
                    println!("{}", serde_json::to_string_pretty(out)?);
                }
                if let (Some(c), Some(m)) = (&d.run.error_code, &d.run.error_message) {
                    println!("{c}: {m}");
                }
            }
            return if state == crate::runtime::RunState::Succeeded {
                Ok(())
            } else {
                Err(Exit(3).into())
            };
        }
        if Instant::now() >= deadline {
            if !quiet {
                eprintln!(
                    "\ngave up after {timeout_seconds} s; the run is {}",
                    d.run.state
                );
            }
            return Err(Exit(4).into());
        }
        if tty && !quiet {
            eprint!(
                "\r\x1b[K[{}] {} step(s), {:.1} s, attempt {}/{}",
                d.run.state,
                shown,
                started.elapsed().as_secs_f64(),
                d.run.attempt,
                d.run.max_attempts
            );
            let _ = std::io::stderr().flush();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `awooop audit tail`.
pub(super) async fn audit_cmd(cmd: AuditCmd) -> anyhow::Result<()> {
    let AuditCmd::Tail {
        db,
        project,
        lines,
        follow,
        json,
    } = cmd;
    let p = Platform::connect(&db, None, None).await?;
    let project = ProjectId::parse(&project)?;
    let show = |r: &crate::control::AuditRow| -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!(
                "{} {} {} {} {}{}{}",
                r.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                r.actor,
                r.action,
                r.target.as_deref().unwrap_or("-"),
                r.outcome,
                r.code
                    .as_deref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default(),
                r.trace_id
                    .as_deref()
                    .map(|t| format!(" trace={t}"))
                    .unwrap_or_default(),
            );
        }
        Ok(())
    };
    let mut rows = tenancy::scope(project.clone(), p.control.audit(lines)).await?;
    rows.reverse();
    let mut seen: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.audit_id).collect();
    for r in &rows {
        show(r)?;
    }
    let _ = std::io::stdout().flush();
    if !follow {
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = shutdown_signal() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let mut fresh = tenancy::scope(project.clone(), p.control.audit(200)).await?;
        fresh.retain(|r| !seen.contains(&r.audit_id));
        fresh.reverse();
        for r in &fresh {
            seen.insert(r.audit_id);
            show(r)?;
        }
        let _ = std::io::stdout().flush();
    }
}
