//! Logging: `tracing` events and spans, written to standard output in the
//! format `LOG_FORMAT` names and filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when standard output is a terminal
    /// and `NO_COLOR` is unset or empty.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
    /// (`message` among them) and the enclosing `span`/`spans`.
    Json,
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat, to: LogTo) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match to {
        LogTo::Stdout => {
            let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
            match format {
                LogFormat::Text => builder.with_ansi(colour(std::io::stdout().is_terminal())).init(),
                LogFormat::Json => builder.json().with_ansi(false).init(),
            }
        }
        LogTo::Stderr => {
            let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
            match format {
                LogFormat::Text => builder.with_ansi(colour(std::io::stderr().is_terminal())).init(),
                LogFormat::Json => builder.json().with_ansi(false).init(),
            }
        }
    }
}

/// Where the log goes: standard output for the server (and `migrate`), where
/// log collectors read it; standard error for the commands whose standard
/// output is their answer (`keys`, `create-admin`, `print-schema`), so that
/// it can be read or piped alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    Stdout,
    Stderr,
}

/// Colour for a terminal, unless `NO_COLOR` (<https://no-color.org>) says otherwise.
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
