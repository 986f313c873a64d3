use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: per-thread free lists and no arena lock. Under the
/// gateway benchmark glibc's `malloc`/`free`, arena lock waits included, were about 16% of the
/// samples of `awooop up` (issue 18; docs/benchmarks.md "perf-gateway" has the before/after).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before any thread exists: master secrets given as files (`NAME_FILE`) become visible to
    // the parser, and once parsed every master secret leaves the environment (and the block
    // /proc/<pid>/environ shows), so no child process and no reader of that file finds one.
    if let Err(e) = awooop::master_secrets::load_files() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(1);
    }
    let cli = awooop::config::Cli::parse();
    awooop::master_secrets::scrub();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: awooop::config::Cli) -> std::process::ExitCode {
    awooop::tls::install_crypto_provider();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colours only on a terminal: a log redirected to a file or collected by a supervisor
    // stays plain text that grep and log shippers read.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    // Log lines go to stderr through one writer thread (`log_writer`): a request thread
    // queues its access-log line and goes on instead of making a system call per line.
    let (log_out, log_guard) = match awooop::log_writer::non_blocking(std::io::stderr()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: cannot start the log writer thread: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(log_out);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let result = awooop::cli::run(cli).await;
    // Every queued log line is out before the last message and the exit.
    log_guard.flush();
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
