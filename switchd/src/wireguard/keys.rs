//! This node's WireGuard key, kept in `state_dir` as `wireguard.key`: one line of base64,
//! the format `wg genkey` writes, mode 0600. Created on first start (or by
//! `switchd --keygen`), then read unchanged on every start, so peers keep knowing us.
//! It is never in `/run`, which a reboot empties.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::config::{format_wireguard_key, parse_wireguard_key};

pub const KEY_FILE: &str = "wireguard.key";
/// The key a rotation replaced, kept so that an operator can go back to it.
pub const OLD_KEY_FILE: &str = "wireguard.key.old";

pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_FILE)
}

/// Read the key in `state_dir`, or make one if there is none. Returns the key and whether
/// it was made now.
pub fn load_or_create(state_dir: &Path) -> Result<(StaticSecret, bool)> {
    let path = key_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by other users (mode {:o}); run chmod 600 on it",
                    path.display(),
                    mode & 0o777
                );
            }
            let key = parse_wireguard_key(&text).with_context(|| {
                format!(
                    "{} does not hold a WireGuard private key (one line of base64, as `wg genkey` prints); move it away to have a new key made, and give the peers the new public key",
                    path.display()
                )
            })?;
            Ok((StaticSecret::from(key), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_key()?;
            write_key(&path, &key)?;
            Ok((StaticSecret::from(key), true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// With `encryption = "wireguard"`: this node's key (made if there is none), its public
/// half written into `cfg` so that what the node publishes names it. `None` without
/// encryption.
pub fn load_node_key(cfg: &mut crate::config::Config) -> Result<Option<StaticSecret>> {
    let state_dir = cfg.state_dir.clone();
    let crate::config::Encryption::WireGuard(w) = &mut cfg.encryption else {
        return Ok(None);
    };
    let (secret, made) = load_or_create(&state_dir)?;
    let public = public_of(&secret);
    if made {
        tracing::info!(path = %key_path(&state_dir).display(), public_key = %format_wireguard_key(&public), "made this node's WireGuard key; peers need its public key");
    }
    w.public_key = Some(public);
    Ok(Some(secret))
}

pub fn public_of(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

/// Replace the key in `state_dir` with a new one, keeping the old one as
/// `wireguard.key.old`. Returns the old public key (if there was a key) and the new one.
/// A running switchd goes on with the key it read at start until it is restarted.
pub fn rotate(state_dir: &Path) -> Result<(Option<[u8; 32]>, [u8; 32])> {
    let path = key_path(state_dir);
    let old = match std::fs::metadata(&path) {
        Ok(_) => {
            let (secret, _) = load_or_create(state_dir)?;
            write_key(&state_dir.join(OLD_KEY_FILE), &secret.to_bytes())?;
            Some(public_of(&secret))
        }
        Err(_) => None,
    };
    let key = random_key()?;
    write_key(&path, &key)?;
    Ok((old, public_of(&StaticSecret::from(key))))
}

fn random_key() -> Result<[u8; 32]> {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read /dev/urandom for a new WireGuard key")?;
    Ok(key)
}

/// Write the key beside its final name and rename it into place, so a crash or a full disk
/// never leaves a half-written key behind.
fn write_key(path: &Path, key: &[u8; 32]) -> Result<()> {
    let dir = path.parent().context("the key path has no directory")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state_dir {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(f, "{}", format_wireguard_key(key))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!(
            "cannot write a new WireGuard key to {}: {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("switchd-wgkey-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn made_once_then_read_back_the_same() {
        let d = dir("stable");
        let (a, made) = load_or_create(&d).unwrap();
        assert!(made);
        let mode = std::fs::metadata(key_path(&d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, made) = load_or_create(&d).unwrap();
        assert!(!made);
        assert_eq!(public_of(&a), public_of(&b));
        let (old, new) = rotate(&d).unwrap();
        assert_eq!(old, Some(public_of(&a)));
        assert_ne!(new, public_of(&a));
        let (c, made) = load_or_create(&d).unwrap();
        assert!(!made);
        assert_eq!(public_of(&c), new);
        let kept = std::fs::read_to_string(d.join(OLD_KEY_FILE)).unwrap();
        assert_eq!(parse_wireguard_key(&kept), Some(a.to_bytes()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_open_or_garbled_key_file_is_refused_and_kept() {
        let d = dir("bad");
        load_or_create(&d).unwrap();
        let path = key_path(&d);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&d).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        let e = format!("{:#}", load_or_create(&d).err().unwrap());
        assert!(e.contains("does not hold a WireGuard private key"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
