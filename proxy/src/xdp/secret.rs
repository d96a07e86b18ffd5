//! The master secret every instance of a fleet shares, and the epoch keys
//! derived from it (see `ackgate_common::cookie::derive_key`).

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use ackgate_common::cookie;
use thiserror::Error;

/// 128-bit master secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 16]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("secret file {path} must hold exactly 32 hex digits (128 bits), optionally followed by a newline; {why}")]
    Malformed { path: String, why: String },
    #[error("secret file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
    Permissions { path: String, mode: u32 },
}

impl Secret {
    /// A fresh random secret (single-instance deployments).
    pub fn random() -> Self {
        Secret(rand::random())
    }

    /// Parses 32 hex digits; surrounding whitespace is ignored.
    pub fn parse_hex(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.len() != 32 {
            return Err(format!("found {} characters", t.len()));
        }
        let mut out = [0u8; 16];
        for (i, chunk) in t.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).map_err(|_| "not ASCII".to_string())?;
            out[i] = u8::from_str_radix(s, 16).map_err(|_| format!("'{s}' is not hex"))?;
        }
        Ok(Secret(out))
    }

    /// Reads a secret file: 32 hex digits, not readable by group/others.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        use std::os::unix::fs::PermissionsExt as _;
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SecretError::Read {
            path: p.clone(),
            err: source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Permissions { path: p, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: p.clone(),
            err: source,
        })?;
        Self::parse_hex(&text).map_err(|why| SecretError::Malformed { path: p, why })
    }

    /// Hex form, for writing a secret file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn key(&self, epoch: u32) -> cookie::Key {
        cookie::derive_key(&self.0, epoch)
    }
}

/// Epoch number now, for a period in seconds.
pub fn current_epoch(period_secs: u32) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    cookie::epoch_at(now, period_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_rejects_garbage() {
        let s = Secret::parse_hex("000102030405060708090a0b0c0d0e0f\n").unwrap();
        assert_eq!(s.0[15], 15);
        assert_eq!(Secret::parse_hex(&s.to_hex()).unwrap(), s);
        assert!(Secret::parse_hex("abc")
            .unwrap_err()
            .contains("3 characters"));
        assert!(Secret::parse_hex("zz0102030405060708090a0b0c0d0e0f")
            .unwrap_err()
            .contains("not hex"));
    }

    #[test]
    fn secret_file_errors_are_specific() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("ackgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "not a secret").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Secret::from_file(&f),
            Err(SecretError::Malformed { .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Secret::from_file(&f),
            Err(SecretError::Permissions { .. })
        ));
        assert!(matches!(
            Secret::from_file(&dir.join("missing")),
            Err(SecretError::Read { .. })
        ));
        std::fs::write(&f, "00112233445566778899aabbccddeeff\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(Secret::from_file(&f).unwrap().0[1], 0x11);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
