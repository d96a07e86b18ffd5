//! The metrics endpoint: a small HTTP/1.0-style responder on the engine's
//! runtime that answers any request with the Prometheus text. Owning it
//! (rather than the exporter crate's listener thread) lets it degrade the
//! way the rest of ackgate does when a local resource runs out: an accept
//! that fails (EMFILE, ENOBUFS) backs off and is logged once a minute with
//! a count, never once per attempt; scrapes are few at a time and bounded
//! in time.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Scrapes served at once; more wait in the listen backlog.
const CONCURRENT: usize = 8;
/// A scrape's whole exchange, request to last byte.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The request head read at most (the request itself is ignored).
const HEAD_MAX: usize = 8 * 1024;
/// Histograms are folded this often.
const UPKEEP: Duration = Duration::from_secs(5);
/// Back-off after a failed accept, doubling up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Failed accepts are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The bound endpoint and the recorder it renders.
pub struct Exporter {
    pub(crate) listener: std::net::TcpListener,
    pub(crate) handle: PrometheusHandle,
    pub addr: SocketAddr,
}

impl Exporter {
    /// Serves scrapes until the runtime ends.
    pub async fn serve(self) {
        let Exporter {
            listener, handle, ..
        } = self;
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("metrics endpoint unusable: {e}");
                return;
            }
        };
        let handle = Arc::new(handle);
        let slots = Arc::new(Semaphore::new(CONCURRENT));
        let mut upkeep = tokio::time::interval(UPKEEP);
        let mut backoff = BACKOFF_MIN;
        let (mut failed, mut warned) = (0u64, None::<Instant>);
        loop {
            tokio::select! {
                _ = upkeep.tick() => handle.run_upkeep(),
                r = listener.accept() => match r {
                    Ok((s, _)) => {
                        backoff = BACKOFF_MIN;
                        let Ok(permit) = slots.clone().acquire_owned().await else { return };
                        let h = handle.clone();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(s, &h)).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        failed += 1;
                        if warned.is_none_or(|t: Instant| t.elapsed() >= WARN_EVERY) {
                            warned = Some(Instant::now());
                            tracing::warn!(
                                "metrics endpoint: accept failed ({e}); {failed} failures so far, \
                                 backing off (logged once a minute)"
                            );
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                },
            }
        }
    }
}

/// Reads the request head (any request gets the metrics) and answers.
async fn answer(mut s: TcpStream, h: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_MAX {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let body = h.render();
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(reply.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}
