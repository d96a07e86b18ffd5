//! `ackgate demo`: the README's first command. Builds a lab, protects the
//! gateway's addresses with the XDP responder, connects real kernel clients
//! and shows that the SYN-ACKs came from XDP with cookies that verify.

use std::{net::SocketAddr, time::Duration};

use ackgate_common::wire::Counter;
use anyhow::{ensure, Result};

use crate::{
    lab::{self, Lab},
    responder::{AttachMode, PassProgram, Responder, Settings},
    secret::{current_epoch, Secret},
};

pub fn run() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the demo builds network namespaces: run it as root"
    );
    let lab = Lab::new()?;
    println!(
        "lab: client netns {} ({}, {}) <-veth-> gateway netns {} ({}, {})",
        lab.client.name, lab.client4, lab.client6, lab.gw.name, lab.vip4, lab.vip6
    );

    let secret = Secret::random();
    let services: [SocketAddr; 2] = [(lab.vip4, 80).into(), (lab.vip6, 80).into()];
    let gw_if = lab.gw_if;
    let s2 = secret.clone();
    let responder = lab.gw.run(move || -> Result<Responder> {
        let settings = Settings::for_mtu(lab::mtu(gw_if)?);
        let mut r = Responder::load()?;
        for s in services {
            r.add_service(s)?;
        }
        r.install_keys(&s2, current_epoch(60), &settings)?;
        r.attach(gw_if, AttachMode::Native)?;
        Ok(r)
    })??;
    lab.drop_acks_at_gateway(80)?;
    let cif = lab.client_if;
    let _pass = lab.client.run(move || PassProgram::attach(cif))??;
    println!("ackgate: XDP responder attached to {} (native); protecting {} and {}; no listener in the gateway",
        lab.gw_if, services[0], services[1]);

    for target in services {
        let before = responder.counters()?;
        let hs = match lab.connect(target, Duration::from_secs(3)) {
            Ok(hs) => hs,
            Err(e) => {
                println!("counters: {}", responder.counters()?);
                return Err(e);
            }
        };
        let after = responder.counters()?.since(&before);
        let p = &hs.synack;
        let verdict = crate::packet::verify_synack(&secret.0, current_epoch(60), p);
        println!(
            "\nconnect({target}) from the client: ok in {:.0} us",
            hs.connect_time.as_secs_f64() * 1e6
        );
        println!(
            "  SYN-ACK seq (cookie) {:#010x}, ack {}, window {}, checksums {}",
            p.seq,
            p.ack,
            p.window,
            if p.ip_checksum_ok && p.tcp_checksum_ok {
                "valid"
            } else {
                "INVALID"
            }
        );
        println!(
            "  options: mss {:?}, wscale {:?}, sack {}, timestamps {:?}",
            p.options.mss(),
            p.options.wscale(),
            p.options.sack_ok,
            p.options.ts()
        );
        match verdict {
            Ok(r) => println!(
                "  cookie verifies with the secret: mss {} wscale {:?} sack {} ecn {}",
                r.mss, r.wscale, r.sack, r.ecn
            ),
            Err(e) => println!("  cookie does NOT verify: {e:?}"),
        }
        println!(
            "  XDP counters for this connect: syn_answered +{}",
            after.get(Counter::SynAnswered)
        );
        ensure!(verdict.is_ok(), "cookie failed to verify");
        ensure!(
            after.get(Counter::SynAnswered) >= 1,
            "the SYN-ACK did not come from XDP"
        );
    }
    println!("\ncounters: {}", responder.counters()?);
    println!("(this stage answers SYNs only: the lab drops the clients' ACKs at the gateway, where\n the kernel has no socket; taking over verified ACKs is the proxy's job)");
    drop(responder);
    println!("demo finished; lab removed");
    Ok(())
}
