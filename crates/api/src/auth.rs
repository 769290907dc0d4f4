//! Bearer tokens: roles, secrets, hashing, and the token table the server checks against.
//!
//! Secrets are 192 random bits, hex-encoded with an `il_` prefix (url-safe, easy to grep for
//! in leaked configs). Only `blake3(secret)` is stored. A presented secret is hashed and
//! looked up by that hash; the final comparison is `blake3::Hash` equality, which is
//! constant-time, and a lookup keyed by a hash leaks nothing usable about the secret.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use incidentlog_store::{EventStore, Store, StoreError, TokenRecord};

use crate::error::ApiError;

/// What a token may do. Ordered: each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// GET requests (not `/v1/admin/*`).
    Reader,
    /// Reader, plus appends and bulk import.
    Reporter,
    /// Everything, `/v1/admin/*` included.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Reporter => "reporter",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reader" => Ok(Role::Reader),
            "reporter" => Ok(Role::Reporter),
            "admin" => Ok(Role::Admin),
            other => Err(ApiError::bad_request(format!(
                "unknown role {other:?}: expected reader, reporter or admin"
            ))),
        }
    }
}

/// Whether `name` may name a token (and so be an event's `recorded_by`): 1 to 64 of letters,
/// digits and `- _ . @`.
pub fn is_token_name(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@');
    !name.is_empty() && name.len() <= 64 && name.chars().all(ok_char)
}

/// A new random secret (192 bits from the OS), or an error when the OS has no randomness.
pub fn try_new_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("no randomness from the OS: {e}")))?;
    Ok(format!("il_{}", incidentlog_store::to_hex(&bytes)))
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Name of the token created on a first start.
pub const FIRST_ADMIN_NAME: &str = "admin";

/// When the store has no token at all, creates an admin token and returns its secret (to be
/// printed once); otherwise returns `None`.
pub async fn ensure_admin_token(store: &Store) -> Result<Option<String>, ApiError> {
    if !store.tokens().await?.is_empty() {
        return Ok(None);
    }
    let secret = try_new_secret()?;
    let added = store
        .add_token(TokenRecord {
            name: FIRST_ADMIN_NAME.to_string(),
            role: Role::Admin.as_str().to_string(),
            secret_hash: hash_secret(&secret),
            created_at: Utc::now(),
            revoked_at: None,
        })
        .await;
    match added {
        Ok(()) => Ok(Some(secret)),
        // Another server on the same database made it first (and printed it).
        Err(StoreError::InvalidInput(_)) if !store.tokens().await?.is_empty() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether any token of `records` may still call the admin API. Revoked tokens count as
/// tokens (a first start makes no new admin once any exist), so revoking the last admin
/// leaves a store that only `incidentlog token create` can open to an admin again.
pub fn has_active_admin(records: &[TokenRecord]) -> bool {
    records
        .iter()
        .any(|t| t.revoked_at.is_none() && t.role == Role::Admin.as_str())
}

/// Who is making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Token name (`recorded_by`), `None` for an anonymous request under `--public-read`.
    pub name: Option<Arc<str>>,
    pub role: Role,
}

#[derive(Clone)]
struct Entry {
    name: Arc<str>,
    role: Role,
    hash: blake3::Hash,
}

/// The server's copy of the token table, refreshed from the store: periodically (so that
/// revocations take effect) and, rate-limited, when an unknown secret is presented (so that a
/// token created by the CLI or by another server works at once).
pub struct TokenTable {
    entries: RwLock<Arc<HashMap<[u8; 32], Entry>>>,
    /// Bumped after every reload: long-lived requests (the live feed) re-check their token.
    reloaded: tokio::sync::watch::Sender<u64>,
    /// Token bucket for reloads caused by unknown secrets: (tokens, last refill).
    miss_budget: Mutex<(f64, Instant)>,
    /// Reloads take turns.
    reload_guard: tokio::sync::Mutex<()>,
    /// Reloads started, and which of them (by that count) completed last: a request whose
    /// secret missed needs a reload that started after the miss, and takes any other
    /// request's (`TokenTable::check`).
    reloads_started: AtomicU64,
    reloads_done: AtomicU64,
    /// Whether the last reload failed (the table kept the tokens loaded before).
    unreadable: AtomicBool,
}

/// Reloads caused by unknown secrets: bursts of up to 10, then 4 per second, so that a flood
/// of bad secrets cannot hammer the store. Requests that miss share the reloads, and wait for
/// the next one when the budget is spent: a new token works on first use, whatever else is
/// presented at the same time.
const MISS_RELOAD_BURST: f64 = 10.0;
const MISS_RELOADS_PER_SEC: f64 = 4.0;

/// Outcome of checking a secret.
pub enum Lookup {
    Valid(Principal),
    Unknown,
}

impl Default for TokenTable {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenTable {
    pub fn new() -> Self {
        TokenTable {
            entries: RwLock::new(Arc::new(HashMap::new())),
            reloaded: tokio::sync::watch::Sender::new(0),
            miss_budget: Mutex::new((MISS_RELOAD_BURST, Instant::now())),
            reload_guard: tokio::sync::Mutex::new(()),
            reloads_started: AtomicU64::new(0),
            reloads_done: AtomicU64::new(0),
            unreadable: AtomicBool::new(false),
        }
    }

    /// Re-reads every token from the store. Revoked tokens and unknown roles are left out.
    pub async fn reload(&self, store: &Store) -> Result<(), ApiError> {
        let _one_at_a_time = self.reload_guard.lock().await;
        self.reload_locked(store).await
    }

    /// [`TokenTable::reload`], the caller holding `reload_guard`. A reload that fails keeps
    /// the tokens loaded before (and says so, once until the tokens read again); it counts as
    /// done for the requests waiting on it, which then answer at once instead of each waiting
    /// for a reload of its own.
    async fn reload_locked(&self, store: &Store) -> Result<(), ApiError> {
        let this = self.reloads_started.fetch_add(1, SeqCst) + 1;
        let loaded = match store.tokens().await {
            Ok(records) => checked(records),
            Err(e) => Err(ApiError::from(e)),
        };
        let result = match loaded {
            Ok(map) => {
                let before = self.entries.read().unwrap_or_else(|p| p.into_inner()).len();
                if map.is_empty() && before > 0 {
                    tracing::warn!(
                        before,
                        "the token table is empty now: every token is refused (a deleted \
                         tokens.json reads as no tokens)"
                    );
                }
                *self.entries.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
                if self.unreadable.swap(false, SeqCst) {
                    tracing::info!("the tokens read again");
                }
                Ok(())
            }
            Err(e) => {
                // The first load's failure is the start's, reported by the caller.
                if !self.unreadable.swap(true, SeqCst) && this > 1 {
                    let kept = self.entries.read().unwrap_or_else(|p| p.into_inner()).len();
                    tracing::error!(
                        error = %e,
                        kept,
                        "cannot read the tokens; the tokens loaded before stay in use, and \
                         unknown ones get 503 until they read again"
                    );
                }
                Err(e)
            }
        };
        self.reloads_done.store(this, SeqCst);
        self.reloaded.send_modify(|n| *n += 1);
        result
    }
}

/// Whether `records` form a valid token table: names by the rules the CLI creates them by
/// (a name is shown as `recorded_by` in the log for good), one token per name (revocation
/// goes by name), a known role each (a hand-edited `Admin` must not silently lock its
/// holder out), and one token per secret (which name would record?). A hand-edited
/// `tokens.json` is checked here, by the server's reloads and by the `token` commands alike.
pub fn check_token_table(records: &[TokenRecord]) -> Result<(), String> {
    let mut names = std::collections::HashSet::with_capacity(records.len());
    let mut secrets = std::collections::HashSet::with_capacity(records.len());
    for r in records {
        let shown: String = r.name.chars().take(80).collect();
        if !is_token_name(&r.name) {
            return Err(format!(
                "the token name {shown:?} breaks the naming rules: 1 to 64 of letters, digits \
                 and - _ . @"
            ));
        }
        if !names.insert(r.name.as_str()) {
            return Err(format!("two tokens are named {shown:?}: names are unique"));
        }
        if r.role.parse::<Role>().is_err() {
            return Err(format!(
                "token {shown:?} has the unknown role {:?} (reader, reporter or admin)",
                r.role.chars().take(40).collect::<String>()
            ));
        }
        if !secrets.insert(r.secret_hash) {
            return Err(format!(
                "token {shown:?} has the secret of another token: one secret, one token"
            ));
        }
    }
    Ok(())
}

/// The token table of `records` (revoked tokens left out), refused whole unless
/// [`check_token_table`] passes.
fn checked(records: Vec<TokenRecord>) -> Result<HashMap<[u8; 32], Entry>, ApiError> {
    check_token_table(&records)
        .map_err(|e| ApiError::Unavailable(format!("the token table is not valid: {e}")))?;
    let mut map = HashMap::with_capacity(records.len());
    for r in records {
        if r.revoked_at.is_some() {
            continue;
        }
        // Checked above.
        let Ok(role) = r.role.parse::<Role>() else {
            continue;
        };
        map.insert(
            r.secret_hash,
            Entry {
                name: Arc::from(r.name.as_str()),
                role,
                hash: blake3::Hash::from_bytes(r.secret_hash),
            },
        );
    }
    Ok(map)
}

impl TokenTable {
    /// Is a token of this name in the table (not revoked)? Names are never reused, revoked
    /// or not, so the name stands for the token.
    pub fn is_active(&self, name: &str) -> bool {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        entries.values().any(|e| &*e.name == name)
    }

    /// Resolves once a reload no longer holds the token `name` (revoked).
    pub async fn revoked(&self, name: &str) {
        let mut reloads = self.reloaded.subscribe();
        if reloads.wait_for(|_| !self.is_active(name)).await.is_err() {
            // The table is gone with the server: nothing will revoke it any more.
            std::future::pending::<()>().await;
        }
    }

    fn find(&self, presented: &blake3::Hash) -> Option<Principal> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let entry = entries.get(presented.as_bytes())?;
        // Constant-time equality (blake3::Hash's PartialEq).
        (entry.hash == *presented).then(|| Principal {
            name: Some(entry.name.clone()),
            role: entry.role,
        })
    }

    /// Checks a secret against the table as loaded (no I/O).
    pub fn find_secret(&self, secret: &str) -> Option<Principal> {
        self.find(&blake3::hash(secret.as_bytes()))
    }

    /// Checks a secret; on a miss, looks again after a reload that started after the miss:
    /// another request's, or its own (rate-limited: past the budget it waits for the next
    /// one's turn, holding the others that missed, who then share it).
    pub async fn check(&self, store: &Store, secret: &str) -> Result<Lookup, ApiError> {
        let presented = blake3::hash(secret.as_bytes());
        if let Some(p) = self.find(&presented) {
            return Ok(Lookup::Valid(p));
        }
        let missed_after = self.reloads_started.load(SeqCst);
        let _one_at_a_time = self.reload_guard.lock().await;
        if self.reloads_done.load(SeqCst) <= missed_after {
            if let Some(wait) = self.take_miss_reload() {
                tokio::time::sleep(wait).await;
            }
            // A failed reload is reported below, as for the requests that shared it.
            let _ = self.reload_locked(store).await;
        }
        if let Some(p) = self.find(&presented) {
            return Ok(Lookup::Valid(p));
        }
        // Unknown to the tokens as last loaded; if they cannot be read now, it may be a new
        // token: not a 401, but "try again".
        if self.unreadable.load(SeqCst) {
            return Err(ApiError::Busy {
                retry_after_secs: 5,
                why: "the tokens cannot be read right now (see the server log); try again",
            });
        }
        Ok(Lookup::Unknown)
    }

    /// Takes one reload from the budget; how long to wait first if it is spent.
    fn take_miss_reload(&self) -> Option<Duration> {
        let mut budget = self.miss_budget.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(budget.1).as_secs_f64() * MISS_RELOADS_PER_SEC;
        budget.0 = (budget.0 + refill).min(MISS_RELOAD_BURST) - 1.0;
        budget.1 = now;
        // In debt: the reload waits until the bucket would have refilled to it (reloads take
        // turns, so the debt never passes one).
        (budget.0 < 0.0).then(|| Duration::from_secs_f64(-budget.0 / MISS_RELOADS_PER_SEC))
    }
}
