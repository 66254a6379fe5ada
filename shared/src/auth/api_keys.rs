//! Tenant API keys for machine access.
//!
//! A key looks like `tnt_<prefix>_<secret>`: the 12-character prefix finds the row, the whole key is
//! checked against its stored SHA-256 in constant time. The key is shown once, at creation; only
//! the hash is stored. Keys are 256-bit random, so a fast hash is enough (no password stretching).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::{AuthError, Scope};
use crate::cache::TtlCache;
use crate::db::{Db, DbError, StoredApiKey, TenantRef, TenantTx};

const PREFIX_LEN: usize = 12;
const SECRET_BYTES: usize = 32;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A freshly created key. `key` is the only copy of the secret: show it once, store it nowhere.
#[derive(Clone, Serialize)]
pub struct NewApiKey {
    /// The key's id.
    pub key_id: Uuid,
    /// The public prefix (safe to show in lists).
    pub prefix: String,
    /// The whole key.
    pub key: String,
    /// The name it was given.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key_id", &self.key_id)
            .field("prefix", &self.prefix)
            .field("scopes", &self.scopes)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A key as listed: never the secret, never the hash.
#[derive(Clone, Debug, Serialize)]
pub struct ApiKeyInfo {
    /// The key's id.
    pub key_id: Uuid,
    /// The public prefix.
    pub prefix: String,
    /// Its name.
    pub name: String,
    /// What it may do (fixed at creation).
    pub scopes: Vec<Scope>,
    /// Who created it (`user:<sub>`).
    pub created_by: String,
    /// When.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was last used (to the minute), if ever.
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Creating, revoking and verifying tenant API keys.
#[derive(Debug)]
pub struct ApiKeys;

impl ApiKeys {
    /// Creates a key for the transaction's tenant with `scopes` (not empty: the caller
    /// validates), recorded as created by its actor.
    pub async fn create(
        tx: &mut TenantTx,
        name: &str,
        scopes: &[Scope],
    ) -> Result<NewApiKey, DbError> {
        let prefix = random_prefix()?;
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|e| DbError::Config(format!("randomness: {e}")))?;
        let key = format!("tnt_{prefix}_{}", URL_SAFE_NO_PAD.encode(secret));
        let hash = hash(&key);
        let tenant = tx.tenant_id().as_uuid();
        let actor = tx.context().actor_id.clone();
        // Stored sorted and without repeats, the one form the table's CHECK admits.
        let mut scopes = scopes.to_vec();
        scopes.sort_unstable();
        scopes.dedup();
        let scope_names: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
        let row = tx
            .query_one(
                "INSERT INTO app.api_keys (tenant_id, prefix, hash, name, created_by, scopes) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING key_id",
                &[
                    (&tenant, Type::UUID),
                    (&prefix, Type::TEXT),
                    (&hash.as_slice(), Type::BYTEA),
                    (&name, Type::TEXT),
                    (&actor, Type::TEXT),
                    (&scope_names, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        Ok(NewApiKey {
            key_id: row.get(0),
            prefix,
            key,
            name: name.to_owned(),
            scopes,
        })
    }

    /// The tenant's keys, newest first.
    pub async fn list(tx: &mut TenantTx) -> Result<Vec<ApiKeyInfo>, DbError> {
        let tenant = tx.tenant_id().as_uuid();
        let rows = tx
            .query(
                "SELECT key_id, prefix, name, created_by, created_at, last_used_at, revoked_at, \
                 scopes FROM app.api_keys WHERE tenant_id = $1 ORDER BY created_at DESC, key_id DESC",
                &[(&tenant, Type::UUID)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ApiKeyInfo {
                key_id: r.get(0),
                prefix: r.get(1),
                name: r.get(2),
                created_by: r.get(3),
                created_at: r.get(4),
                last_used_at: r.get(5),
                revoked_at: r.get(6),
                scopes: scopes_of(r.get(7)),
            })
            .collect())
    }

    /// Records that a key was used (skipped if it was recorded in the last minute).
    pub async fn touch(
        db: &Db,
        ctx: &crate::db::TenantContext,
        key_id: Uuid,
    ) -> Result<(), DbError> {
        let mut tx = db.begin(ctx, crate::db::Access::ReadWrite).await?;
        tx.execute(
            "UPDATE app.api_keys SET last_used_at = now() WHERE key_id = $1 \
             AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            &[(&key_id, Type::UUID)],
        )
        .await?;
        tx.commit().await
    }

    /// Revokes a key of the transaction's tenant. False if there is no such key (or it is
    /// another tenant's: RLS makes the two look the same).
    pub async fn revoke(tx: &mut TenantTx, key_id: Uuid) -> Result<bool, DbError> {
        let n = tx
            .execute(
                "UPDATE app.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1",
                &[(&key_id, Type::UUID)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Checks a presented key; the key's id, scopes and tenant if it is valid and not revoked.
    ///
    /// The stored key (its hash, revocation and tenant status, never the key) is looked up by
    /// prefix through `lookups`, so a key in steady use costs a database round trip once per
    /// the cache's TTL: a revocation or suspension takes effect within it. The hash is compared
    /// on every request.
    pub(crate) async fn verify(
        db: &Db,
        lookups: &TtlCache<String, StoredApiKey>,
        presented: &str,
    ) -> Result<(Uuid, Vec<Scope>, TenantRef), AuthError> {
        let prefix = parse_prefix(presented).ok_or(AuthError::InvalidApiKey)?;
        let stored = match lookups.get(prefix) {
            Some(hit) => Some(hit),
            None => {
                let read_at = lookups.generation();
                let found = db.api_key_for_prefix(prefix).await?;
                // Only keys that exist: an unknown prefix may be created a moment later.
                if let Some(f) = &found {
                    lookups.insert_read_at(read_at, prefix.to_owned(), f.clone());
                }
                found
            }
        };
        let presented_hash = hash(presented);
        // Compare even when the prefix is unknown. (Timing still tells a prefix used in the last
        // few seconds, served from the cache, from one that was not; prefixes are not secret.)
        let expected = stored
            .as_ref()
            .map_or(&[0u8; 32][..], |s| s.hash.as_slice());
        let matches: bool = presented_hash.as_slice().ct_eq(expected).into();
        match stored {
            Some(s) if matches && !s.revoked => Ok((s.key_id, scopes_of(s.scopes), s.tenant)),
            _ => Err(AuthError::InvalidApiKey),
        }
    }
}

/// Stored scope names as scopes. The table's CHECK admits only known names; one this build does
/// not know (a newer schema) grants nothing rather than failing every request of the key.
fn scopes_of(names: Vec<String>) -> Vec<Scope> {
    names.iter().filter_map(|n| Scope::parse(n)).collect()
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn random_prefix() -> Result<String, DbError> {
    let mut out = String::with_capacity(PREFIX_LEN);
    let mut buf = [0u8; 32];
    while out.len() < PREFIX_LEN {
        getrandom::fill(&mut buf).map_err(|e| DbError::Config(format!("randomness: {e}")))?;
        push_unbiased(&mut out, &buf);
    }
    Ok(out)
}

/// Appends a character for each random byte until the prefix is long enough. Rejection
/// sampling: bytes from 252 up are skipped (252 is the largest multiple of 36 not above 256), so
/// no character is favoured.
fn push_unbiased(out: &mut String, random: &[u8]) {
    for b in random.iter().filter(|b| **b < 252) {
        if out.len() == PREFIX_LEN {
            break;
        }
        out.push(ALPHABET[(*b % 36) as usize] as char);
    }
}

/// The prefix of a well-formed key, or None.
fn parse_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("tnt_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let well_formed = prefix.len() == PREFIX_LEN
        && prefix.bytes().all(|b| ALPHABET.contains(&b))
        && secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_random_and_well_formed() {
        let a = random_prefix().unwrap_or_default();
        let b = random_prefix().unwrap_or_default();
        assert_eq!(a.len(), PREFIX_LEN);
        assert_ne!(a, b);
        let key = format!("tnt_{a}_{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert_eq!(parse_prefix(&key), Some(a.as_str()));
    }

    /// Bytes 252 to 255 are skipped, every other byte is a character (`b % 36`), and the prefix
    /// stops at its length.
    #[test]
    fn bytes_map_to_characters_without_bias() {
        let mut out = String::new();
        push_unbiased(&mut out, &[252, 0, 255, 35, 36, 251, 253, 25]);
        assert_eq!(out, "a9a9z");
        push_unbiased(&mut out, &[1; 20]);
        assert_eq!(out, "a9a9zbbbbbbb");
    }

    /// A key in a log line shows which key it is, never the secret.
    #[test]
    fn debug_output_names_the_key_but_never_its_secret() {
        let key = NewApiKey {
            key_id: Uuid::nil(),
            prefix: "abcdefghijkl".into(),
            key: format!("tnt_abcdefghijkl_{}", URL_SAFE_NO_PAD.encode([9u8; 32])),
            name: "etl".into(),
            scopes: vec![Scope::Ingest],
        };
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.key[17..]), "{shown}");
        for part in [
            "abcdefghijkl",
            "<redacted>",
            "Ingest",
            &Uuid::nil().to_string(),
        ] {
            assert!(shown.contains(part), "{part} missing from {shown}");
        }
    }

    /// Every character of the alphabet is drawn, none far more often than the others: 12,000
    /// draws give each about 333 (a character missing has probability e^-333; one past 500 is
    /// nine standard deviations out).
    #[test]
    fn prefix_characters_cover_the_alphabet_evenly() {
        let mut counts = [0usize; 36];
        for _ in 0..1000 {
            let p = random_prefix().unwrap_or_default();
            assert_eq!(p.len(), PREFIX_LEN);
            for b in p.bytes() {
                let Some(i) = ALPHABET.iter().position(|a| *a == b) else {
                    panic!("{p:?} has a character outside the alphabet");
                };
                counts[i] += 1;
            }
        }
        assert!(counts.iter().all(|n| (200..=500).contains(n)), "{counts:?}");
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        for bad in [
            "",
            "tnt_",
            "tnt_abc_def",
            "xyz_abcdefghijkl_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "tnt_ABCDEFGHIJKL_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "tnt_abcdefghijkl_AAAA'; --AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(parse_prefix(bad), None, "{bad:?}");
        }
    }
}
