//! The one output module of the commands that create something (`-o json|yaml|name`,
//! `--quiet`), so scripts read ids without `sed`:
//!
//! - `json` (the default of most commands): the whole result, pretty-printed;
//! - `yaml`: the same, as YAML;
//! - `name`: only the value a script needs next, one per line (a run id, a revision id, an API
//!   key's token, `kind/name@revision` for `apply`);
//! - `--quiet`: nothing on success; the exit code tells.
//!
//! Errors are unaffected: JSON `{code, message, details}` on stderr and exit code 2.

use serde::Serialize;

use crate::config::OutputArgs;

/// How a command's result is shown when no `-o` was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Json,
    /// Human lines (the `text` closure), e.g. `apply`'s "what changed".
    Text,
}

/// Print `value` as the caller asked. `names` are the `-o name` lines; `text` the human lines
/// of commands whose default is text.
pub(crate) fn emit<T: Serialize>(
    out: &OutputArgs,
    default: Style,
    value: &T,
    names: impl FnOnce() -> Vec<String>,
    text: impl FnOnce() -> Vec<String>,
) -> anyhow::Result<()> {
    if out.quiet {
        return Ok(());
    }
    let format = match out.output.as_deref() {
        Some(f) => f,
        None if default == Style::Text => "text",
        None => "json",
    };
    match format {
        "yaml" => print!("{}", serde_saphyr::to_string(value)?),
        "name" => {
            for n in names() {
                println!("{n}");
            }
        }
        "text" => {
            for l in text() {
                println!("{l}");
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

/// [`emit`] for commands whose default is JSON and whose `-o name` is one field.
pub(crate) fn emit_one<T: Serialize>(
    out: &OutputArgs,
    value: &T,
    name: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    emit(out, Style::Json, value, || vec![name(value)], Vec::new)
}
