//! Master secrets out of the environment of every `awooop` process.
//!
//! The gateway key, the admin token and the database/Redis URLs (which may carry passwords;
//! `DATABASE_URL` is the owner's) are read from files (`NAME_FILE=/path`, e.g. a mounted
//! Secret) or, for compatibility, from the environment. [`load_files`] runs first thing in
//! `main`, before any thread exists; after the command line is parsed, [`scrub`] removes every
//! one of them from the process environment **and overwrites its value in the original
//! environment block**, which is what `/proc/<pid>/environ` shows (removing the variable alone
//! would leave it there). So neither a child process (they inherit the environment) nor anyone
//! able to read `/proc/<pid>/environ` finds a master secret in it.
//!
//! File values: the content with one trailing newline (`\n` or `\r\n`) removed, nothing else
//! (the rule `kubectl create secret --from-file` and editors need).

/// The master secrets, by environment variable.
pub const MASTER_SECRETS: &[&str] = &[
    "AWOOOP_GATEWAY_KEY",
    "AWOOOP_ADMIN_TOKEN",
    "DATABASE_URL",
    "AWOOOP_APP_DATABASE_URL",
    "REDIS_URL",
];

/// A file value: the content minus one trailing newline.
pub fn file_value(raw: &str) -> &str {
    raw.strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(raw)
}

/// For each master secret `NAME` with `NAME_FILE` set, read the file and make its value
/// visible to the command-line parser as `NAME`. Giving both is an error (which one wins
/// would be a guess).
///
/// # Safety (of the environment writes inside)
/// Must run before any other thread exists (first thing in `main`, before the tokio runtime).
pub fn load_files() -> Result<(), String> {
    for name in MASTER_SECRETS {
        let file_var = format!("{name}_FILE");
        let Some(path) = std::env::var_os(&file_var) else {
            continue;
        };
        if std::env::var_os(name).is_some() {
            return Err(format!("both {name} and {file_var} are set; set only one"));
        }
        let raw = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {file_var} ({}): {}",
                std::path::Path::new(&path).display(),
                e.kind()
            )
        })?;
        let value = file_value(&raw);
        if value.is_empty() || value.contains('\0') {
            return Err(format!("{file_var}: the file is empty or contains NUL"));
        }
        // SAFETY: single-threaded start of the process (see the function's contract).
        unsafe { std::env::set_var(name, value) };
    }
    Ok(())
}

/// Remove every master secret from the environment and overwrite its value where
/// `/proc/<pid>/environ` reads it. Call after the command line was parsed, before any thread
/// exists.
pub fn scrub() {
    for name in MASTER_SECRETS {
        overwrite_in_place(name);
        // SAFETY: single-threaded start of the process (see the function's contract).
        unsafe { std::env::remove_var(name) };
    }
}

#[cfg(target_os = "linux")]
fn overwrite_in_place(name: &str) {
    use std::ffi::{CStr, c_char};
    unsafe extern "C" {
        static mut environ: *const *mut c_char;
    }
    let prefix = format!("{name}=");
    // SAFETY: `environ` is the NULL-terminated array of NUL-terminated strings of this
    // process; nothing else touches it while we run (single-threaded start). The strings of
    // the initial environment live in the (writable) block `/proc/<pid>/environ` shows; the
    // ones `set_var` added live on the heap. Overwriting bytes inside a string, before its
    // terminating NUL, keeps every string valid.
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return;
        }
        while !(*p).is_null() {
            let s = *p;
            let bytes = CStr::from_ptr(s).to_bytes();
            if bytes.starts_with(prefix.as_bytes()) {
                for i in prefix.len()..bytes.len() {
                    *s.add(i) = 0;
                }
            }
            p = p.add(1);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn overwrite_in_place(_name: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_lose_one_trailing_newline_only() {
        let cases = [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            (" s3cret \n", " s3cret "),
        ];
        for (raw, want) in cases {
            assert_eq!(file_value(raw), want, "{raw:?}");
        }
    }
}
