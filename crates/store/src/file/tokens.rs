//! `tokens.json`: the token table, replaced atomically (tmp + fsync + rename + dir fsync).
//!
//! Edits take an exclusive lock on `tokens.lock` for the whole read-modify-write, so that a
//! server and `incidentlog token` commands run while it holds the store (or two such
//! commands) never lose each other's changes. Reads need no lock: the file is only ever
//! replaced whole.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::{StoreError, TokenRecord};

const FILE: &str = "tokens.json";
const LOCK: &str = "tokens.lock";

/// Every token of the data directory `dir` (none if there is no token file).
pub fn load(dir: &Path) -> Result<Vec<TokenRecord>, StoreError> {
    let path = dir.join(FILE);
    let bytes = match super::io::read_small_by_name(&path, 64 << 20) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    // Not the log: a damaged token file is an I/O-like failure (exit 1), not log damage. What
    // a hand edit may break beyond the JSON (one token per name, ...) the API checks, for
    // every backend (`auth::check_token_table`).
    serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a valid token file: {e}", path.display()),
        ))
    })
}

/// Adds `token`; a token of the same name is an `InvalidInput` error.
pub fn add(dir: &Path, token: TokenRecord) -> Result<(), StoreError> {
    locked(dir, || {
        let mut all = load(dir)?;
        if all.iter().any(|t| t.name == token.name) {
            return Err(StoreError::InvalidInput(format!(
                "a token named {:?} already exists",
                token.name
            )));
        }
        all.push(token);
        store(dir, &all)
    })
}

/// Marks the token `name` revoked at `at` (kept if it already was); false if there is none.
pub fn revoke(dir: &Path, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
    locked(dir, || {
        let mut all = load(dir)?;
        let Some(t) = all.iter_mut().find(|t| t.name == name) else {
            return Ok(false);
        };
        if t.revoked_at.is_none() {
            t.revoked_at = Some(at);
            store(dir, &all)?;
        }
        Ok(true)
    })
}

/// Runs `edit` holding the exclusive lock of `dir`'s token file (released when the lock
/// file is closed, also if this process dies).
fn locked<T>(dir: &Path, edit: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let path = dir.join(LOCK);
    let lock = super::io::open_by_name(
        super::io::new_file_options(dir)
            .create(true)
            .truncate(false)
            .write(true),
        &path,
    )?;
    lock.lock()?;
    edit()
}

fn store(dir: &Path, tokens: &[TokenRecord]) -> Result<(), StoreError> {
    // Unique per process: a crashed editor's leftover never collides with a live one.
    let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
    let bytes = serde_json::to_vec_pretty(tokens)
        .map_err(|e| StoreError::InvalidInput(format!("token does not serialize: {e}")))?;
    // A leftover of a crashed editor with this pid would keep its old mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = super::io::new_file_options(dir)
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    super::io::adopt_dir_owner(&f, dir);
    let written = f
        .write_all(&bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, dir.join(FILE))
        });
    if let Err(e) = written {
        // A full disk: no half-written copy is left beside the tokens.
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    super::io::sync_dir(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str) -> TokenRecord {
        TokenRecord {
            name: name.to_string(),
            role: "reader".to_string(),
            secret_hash: [0; 32],
            created_at: Utc::now(),
            revoked_at: None,
        }
    }

    #[test]
    fn concurrent_editors_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for w in 0..6 {
                let dir = dir.path();
                s.spawn(move || {
                    for i in 0..15 {
                        add(dir, token(&format!("t{w}-{i}"))).unwrap();
                    }
                });
            }
        });
        let all = load(dir.path()).unwrap();
        assert_eq!(all.len(), 90);
        assert!(matches!(
            add(dir.path(), token("t0-0")),
            Err(StoreError::InvalidInput(_))
        ));
        assert!(revoke(dir.path(), "t3-7", Utc::now()).unwrap());
        assert!(!revoke(dir.path(), "nobody", Utc::now()).unwrap());
        let all = load(dir.path()).unwrap();
        assert_eq!(all.iter().filter(|t| t.revoked_at.is_some()).count(), 1);
    }
}
