//! Logs go to stderr (journald takes them under systemd).

use anyhow::{Context as _, Result};
use tracing_subscriber::EnvFilter;

/// Overrides the configured level when set.
pub const ENV: &str = "ACKGATE_LOG";

/// Installs the subscriber: `ACKGATE_LOG` if set, else `level`. A bare
/// level applies to ackgate's own logs; libraries (aya's loader is chatty
/// at debug) stay at warn.
pub fn init(level: &str) -> Result<()> {
    let filter = match std::env::var(ENV) {
        Ok(v) if !v.is_empty() => filter(&v).with_context(|| format!("{ENV}='{v}'"))?,
        _ => filter(level).with_context(|| format!("log level '{level}'"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    Ok(())
}

/// The filter for a level name or a full tracing directive.
pub fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let bare =
        ["error", "warn", "info", "debug", "trace"].contains(&level.to_ascii_lowercase().as_str());
    if bare {
        EnvFilter::try_new(format!("warn,ackgate={level}"))
    } else {
        EnvFilter::try_new(level)
    }
}
