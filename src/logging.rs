//! Process-wide logging: logs, the access log included, go to stdout as one
//! JSON object per line, or as text for people — coloured only when stdout
//! is a terminal, so a file, a pipe or a container log gets plain text.
//! Shared by the gateway's binary and the demo.

use crate::config::LogFormat;

/// Installs the global subscriber (`RUST_LOG` filters; default `info`).
/// Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}
