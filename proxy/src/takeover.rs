//! Upgrading without dropping a connection: a new ackgate process takes
//! over from a running one over the old one's control socket.
//!
//! 1. The new process connects and asks (`takeover`).
//! 2. The old one answers with its secret, its epoch length and the kernel
//!    ids of its XDP links (bpf_links). Traffic is unaffected.
//! 3. The new process loads its program, installs the same keys (cookies
//!    the old one issued verify in the new one), protects its services,
//!    opens each link by its id and replaces the program on it atomically
//!    (BPF_LINK_UPDATE): no packet ever meets an interface without XDP, so
//!    the kernel never answers a SYN in between. It says `done`. No bpffs
//!    is needed, and the links still die with the last process holding
//!    them, so a crash detaches XDP as it always does.
//! 4. The old process takes no new flow (its program is off the wire),
//!    hands the flows already in its ring to relays, drains them and exits.
//!
//! If the new process fails before `done`, the old one puts its own
//! program back on its links and keeps serving. Only root can use the
//! socket (it carries the secret): it is created mode 600.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use crate::xdp::{secret::Secret, AttachMode};

/// How long the old side waits for the new one to finish taking over
/// (loading and verifying the program included).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request line may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the old instance hands over.
pub struct Offer {
    pub pid: u32,
    pub secret: Secret,
    pub epoch_secs: u32,
    /// (interface, mode, kernel link id) per attached interface.
    pub links: Vec<(String, AttachMode, u32)>,
}

impl Offer {
    fn encode(&self) -> String {
        let mut t = format!(
            "pid {}\nsecret {}\nepoch_secs {}\n",
            self.pid,
            self.secret.to_hex(),
            self.epoch_secs
        );
        for (iface, mode, id) in &self.links {
            t += &format!("link {iface} {} {id}\n", mode.name());
        }
        t + "end\n"
    }

    fn decode(lines: &[String]) -> Result<Self> {
        let (mut pid, mut secret, mut epoch_secs, mut links) = (None, None, None, Vec::new());
        for l in lines {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("pid"), Some(p), None, None) => pid = p.parse().ok(),
                (Some("secret"), Some(s), None, None) => {
                    secret = Some(Secret::parse_hex(s).map_err(anyhow::Error::msg)?)
                }
                (Some("epoch_secs"), Some(e), None, None) => epoch_secs = e.parse().ok(),
                (Some("link"), Some(iface), Some(mode), Some(id)) => {
                    let mode = match mode {
                        "native" => AttachMode::Native,
                        "skb" => AttachMode::Skb,
                        m => bail!("unknown attach mode {m}"),
                    };
                    let id = id.parse().with_context(|| format!("bad link id in: {l}"))?;
                    links.push((iface.to_string(), mode, id));
                }
                (Some("error"), ..) => bail!("the running instance refused: {l}"),
                _ => bail!("unexpected line from the running instance: {l}"),
            }
        }
        Ok(Offer {
            pid: pid.context("no pid in the offer")?,
            secret: secret.context("no secret in the offer")?,
            epoch_secs: epoch_secs.context("no epoch in the offer")?,
            links,
        })
    }
}

/// New side: asks the instance on `socket` for its links, or `None` when
/// no instance listens there (a first start). The returned stream must be
/// answered with [`confirm`] once the links are ours.
pub fn request(socket: &Path) -> Result<Option<(Offer, UnixStream)>> {
    let mut s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("control socket {}", socket.display())),
    };
    s.set_read_timeout(Some(TAKEOVER_TIMEOUT))?;
    s.write_all(b"takeover\n")?;
    let mut lines = Vec::new();
    for l in BufReader::new(s.try_clone()?).lines() {
        let l = l.context("reading the running instance's offer")?;
        if l == "end" {
            return Ok(Some((Offer::decode(&lines)?, s)));
        }
        let refused = l.starts_with("error");
        lines.push(l);
        if refused {
            break;
        }
    }
    Offer::decode(&lines)?;
    bail!("the running instance closed the control socket mid-offer")
}

/// New side: tells the old instance the links are ours.
pub fn confirm(mut s: UnixStream) -> Result<()> {
    s.write_all(b"done\n")
        .context("confirming the takeover to the old instance")
}

/// Old side: what the control task asks of the engine loop.
pub enum Request {
    /// Offer the links and describe them (or say why not).
    Offer(oneshot::Sender<std::result::Result<Offer, String>>),
    /// The new instance has the links: stop taking flows and drain.
    Done,
    /// The new instance failed: take the links back.
    Abort,
}

/// Old side: binds the control socket, refusing one a live instance holds.
pub fn bind(socket: &Path) -> Result<UnixListener> {
    if UnixStream::connect(socket).is_ok() {
        bail!(
            "control socket {} belongs to a running ackgate: to replace it, run with --takeover",
            socket.display()
        );
    }
    let _ = std::fs::remove_file(socket);
    let l = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("binding control socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(UnixListener::from_std(l)?)
}

/// Old side: serves takeover requests, one at a time, until one succeeds.
pub async fn serve(l: UnixListener, to_engine: mpsc::Sender<Request>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (r, mut w) = s.into_split();
        let mut r = tokio::io::BufReader::new(r);
        let mut line = String::new();
        match tokio::time::timeout(REQUEST_TIMEOUT, r.read_line(&mut line)).await {
            Ok(Ok(_)) if line.trim() == "takeover" => {}
            _ => continue,
        }
        let (tx, rx) = oneshot::channel();
        if to_engine.send(Request::Offer(tx)).await.is_err() {
            return;
        }
        let offer = match rx.await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                let _ = w.write_all(format!("error {e}\n").as_bytes()).await;
                continue;
            }
            Err(_) => return,
        };
        let sent = w.write_all(offer.encode().as_bytes()).await.is_ok();
        line.clear();
        let done = sent
            && matches!(
                tokio::time::timeout(TAKEOVER_TIMEOUT, r.read_line(&mut line)).await,
                Ok(Ok(_)) if line.trim() == "done"
            );
        let req = if done { Request::Done } else { Request::Abort };
        if to_engine.send(req).await.is_err() || done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip() {
        let o = Offer {
            pid: 42,
            secret: Secret([7; 16]),
            epoch_secs: 60,
            links: vec![
                ("eth0".into(), AttachMode::Native, 17),
                ("eth1".into(), AttachMode::Skb, 18),
            ],
        };
        let text = o.encode();
        let lines: Vec<String> = text
            .lines()
            .take_while(|l| *l != "end")
            .map(String::from)
            .collect();
        let d = Offer::decode(&lines).unwrap();
        assert_eq!((d.pid, d.secret.0, d.epoch_secs), (42, [7; 16], 60));
        assert_eq!(d.links, o.links);
        match Offer::decode(&["error no links".into()]) {
            Err(e) => assert!(e.to_string().contains("refused"), "{e}"),
            Ok(_) => panic!("an error line is a refusal"),
        }
    }
}
