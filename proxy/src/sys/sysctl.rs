//! The one sysctl the proxy depends on.

use anyhow::{Context as _, Result};

/// A client may reuse its source port while our side of its previous
/// connection is in TIME_WAIT (we close first when the backend does). The
/// kernel lets a listener take such a SYN; for a handed-off flow, the
/// repair-mode connect may replace the time-wait socket only with
/// `tcp_tw_reuse=1` (the default, 2, allows it on loopback alone).
pub fn allow_time_wait_reuse() -> Result<()> {
    const P: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";
    let now = std::fs::read_to_string(P).with_context(|| format!("reading {P}"))?;
    if now.trim() != "1" {
        std::fs::write(P, "1").with_context(|| format!("setting {P} to 1"))?;
        tracing::info!(
            "net.ipv4.tcp_tw_reuse {} -> 1 (handed-off flows may replace time-wait sockets)",
            now.trim()
        );
    }
    Ok(())
}
