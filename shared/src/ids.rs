//! Identifiers that cross trust boundaries, validated once at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A tenant's id. Constructed only from a valid UUID, so a malformed tenant id never reaches SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Uuid);

impl TenantId {
    /// A fresh, time-ordered tenant id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for TenantId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

/// The error for a string that is not a tenant id.
#[derive(Debug, thiserror::Error)]
#[error("not a valid tenant id")]
pub struct InvalidTenantId;

impl FromStr for TenantId {
    type Err = InvalidTenantId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical hyphenated form: no braces, no URNs, no surprises.
        if s.len() != 36 {
            return Err(InvalidTenantId);
        }
        Uuid::try_parse(s).map(Self).map_err(|_| InvalidTenantId)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuids_parse() {
        let id = TenantId::new();
        assert_eq!(id.to_string().parse::<TenantId>().ok(), Some(id));
        for bad in [
            "",
            "x",
            "'; drop table app.tenants; --",
            "00000000-0000-0000-0000-00000000000g",
            "{00000000-0000-0000-0000-000000000000}",
            "urn:uuid:00000000-0000-0000-0000-000000000000",
            "00000000000000000000000000000000",
        ] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad:?} parsed");
        }
    }
}
