//! `tokens.json`: the token table, replaced atomically (tmp + fsync + rename + dir fsync).

use std::io::Write;
use std::path::Path;

use crate::{StoreError, TokenRecord};

const FILE: &str = "tokens.json";

pub(crate) fn load(dir: &Path) -> Result<Vec<TokenRecord>, StoreError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        file: path.display().to_string(),
        offset: e.column() as u64,
        reason: format!("tokens file is not valid: {e}"),
    })
}

pub(crate) fn store(dir: &Path, tokens: &[TokenRecord]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(tokens)
        .map_err(|e| StoreError::InvalidInput(format!("token does not serialize: {e}")))?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(FILE))?;
    super::io::sync_dir(dir)?;
    Ok(())
}
