//! Logging: JSON lines in Lambda (CloudWatch), compact text locally (coloured only on a
//! terminal), quiet in tests unless asked.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Where the logs go, decided by the wiring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines without timestamps (Lambda adds its own), the request id on every line.
    Lambda,
    /// Compact text with ANSI colours only when stdout is a terminal (never in a file or pipe).
    Local,
}

/// Installs the global subscriber once; later calls do nothing. `RUST_LOG` sets the filter.
/// Also replaces the panic hook: a panic is logged with its location only, never its message
/// (which may quote row contents or a secret).
pub fn init(format: LogFormat) {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(location, "panicked");
    }));
    install(format);
}

fn install(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        // Lambda adds its own timestamp; the request id rides on every line via the span.
        LogFormat::Lambda => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .without_time()
            .with_ansi(false)
            .try_init(),
        LogFormat::Local => builder
            .compact()
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
    };
}

/// For tests: logs only when `TEST_LOG` is set.
pub fn init_for_tests() {
    // The panic hook stays the default here: a failing assertion must say what failed.
    if std::env::var_os("TEST_LOG").is_some() {
        install(LogFormat::Local);
    }
}
