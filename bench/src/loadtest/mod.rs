//! Load-testing your own defences: `ackgate-bench flood` (a spoofed SYN
//! flood at a rate) and `ackgate-bench probe` (an open-loop legitimate
//! client), against a target and on an interface you name, in your own
//! lab. Both demand explicit bounds, print a progress line every second
//! and a summary table (or JSON), and refuse broadcast and multicast
//! targets.

use std::net::IpAddr;

use anyhow::{bail, Result};

pub mod flood;
pub mod probe;

/// Most seconds either command runs.
pub const MAX_SECONDS: f64 = 3600.0;

/// Refuses destinations a flood or probe must never be aimed at: the
/// unspecified address, broadcast and multicast.
pub fn check_target(ip: IpAddr) -> Result<()> {
    let bad = match ip {
        IpAddr::V4(a) => {
            if a.is_broadcast() {
                Some("the broadcast address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if a.is_unspecified() {
                Some("the unspecified address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if a.is_multicast() {
                Some("a multicast address")
            } else if a.is_unspecified() {
                Some("the unspecified address")
            } else {
                None
            }
        }
    };
    if let Some(what) = bad {
        bail!("refusing target {ip}: {what} is not a single host");
    }
    Ok(())
}

/// Checks a duration bound: positive, at most [`MAX_SECONDS`].
pub fn check_seconds(s: f64) -> Result<()> {
    if !(s > 0.0 && s <= MAX_SECONDS) {
        bail!("--seconds {s}: must be more than 0 and at most {MAX_SECONDS}");
    }
    Ok(())
}

/// `N` per second, or `max` (flat out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    PerSecond(u64),
    Max,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Rate::PerSecond(n)),
            _ => Err(format!("'{s}': a rate is a positive number or 'max'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_multicast_and_unspecified_targets_are_refused() {
        for t in [
            "255.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "0.0.0.0",
            "ff02::1",
            "::",
        ] {
            let e = check_target(t.parse().unwrap()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("refusing target {t}")), "{e}");
        }
        for t in ["10.0.0.1", "192.0.2.7", "fd00::1"] {
            check_target(t.parse().unwrap()).unwrap();
        }
    }

    #[test]
    fn rates_and_bounds_parse_strictly() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("1000".parse::<Rate>(), Ok(Rate::PerSecond(1000)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert!(check_seconds(0.0).is_err());
        assert!(check_seconds(3601.0).is_err());
        assert!(check_seconds(f64::NAN).is_err());
        check_seconds(2.5).unwrap();
    }
}
