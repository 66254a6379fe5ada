//! What a caller may do: a fixed set of permissions, granted to people by their tenant roles and to
//! API keys by the scopes chosen when the key was made.
//!
//! | permission        | owner | admin | member | viewer | key `read` | key `ingest` |
//! |-------------------|:-----:|:-----:|:------:|:------:|:----------:|:------------:|
//! | `read_data`       |   ✓   |   ✓   |   ✓    |   ✓    |     ✓      |              |
//! | `query`           |   ✓   |   ✓   |   ✓    |   ✓    |     ✓      |              |
//! | `write_data`      |   ✓   |   ✓   |   ✓    |        |            |      ✓       |
//! | `manage_datasets` |   ✓   |   ✓   |   ✓    |        |            |              |
//! | `manage_api_keys` |   ✓   |   ✓   |        |        |            |              |
//! | `manage_members`  |   ✓   |   ✓   |        |        |            |              |
//! | `read_billing`    |   ✓   |   ✓   |        |        |            |              |
//! | `read_audit`      |   ✓   |   ✓   |        |        |            |              |
//! | `export_data`     |   ✓   |   ✓   |        |        |            |              |
//! | `oversee_support` |   ✓   |   ✓   |        |        |            |              |
//! | `manage_support_access` | ✓ |     |        |        |            |              |
//!
//! Unknown role names grant nothing, and a person with no known role can only read who they are
//! (`GET /v1/me`). No scope grants key or member management, so a leaked key cannot mint keys
//! or entrench itself.
//!
//! Support staff acting through an impersonation session hold a fixed set
//! ([`Permissions::for_impersonation`]): a read-only session reads, queries, asks and reads
//! usage and the audit log; a read-write session also writes data and manages datasets; an
//! export needs a session approved for it. No session manages API keys, members or support
//! access, or oversees support sessions. The README and the OpenAPI document carry the same table; a unit test
//! below pins it.

use serde::{Serialize, Serializer};

use super::ImpersonationMode;

/// One thing a route may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read datasets and records.
    ReadData,
    /// Run analytics queries and ask questions.
    Query,
    /// Ingest and delete records.
    WriteData,
    /// Create and delete datasets.
    ManageDatasets,
    /// Create, list and revoke API keys.
    ManageApiKeys,
    /// Manage the tenant's members.
    ManageMembers,
    /// Read usage and billing state.
    ReadBilling,
    /// Read the tenant's audit log.
    ReadAudit,
    /// Download all the tenant's datasets and records (`GET /v1/export`).
    ExportData,
    /// See support's impersonation sessions on the tenant, approve and end them.
    OverseeSupport,
    /// Decide whether support may come in at all (the tenant's support access setting).
    ManageSupportAccess,
}

impl Permission {
    /// Every permission, in the order of the table above.
    pub const ALL: [Permission; 11] = [
        Permission::ReadData,
        Permission::Query,
        Permission::WriteData,
        Permission::ManageDatasets,
        Permission::ManageApiKeys,
        Permission::ManageMembers,
        Permission::ReadBilling,
        Permission::ReadAudit,
        Permission::ExportData,
        Permission::OverseeSupport,
        Permission::ManageSupportAccess,
    ];

    /// The stable name used in problem documents, `/v1/me` and the OpenAPI document.
    pub const fn name(self) -> &'static str {
        match self {
            Permission::ReadData => "read_data",
            Permission::Query => "query",
            Permission::WriteData => "write_data",
            Permission::ManageDatasets => "manage_datasets",
            Permission::ManageApiKeys => "manage_api_keys",
            Permission::ManageMembers => "manage_members",
            Permission::ReadBilling => "read_billing",
            Permission::ReadAudit => "read_audit",
            Permission::ExportData => "export_data",
            Permission::OverseeSupport => "oversee_support",
            Permission::ManageSupportAccess => "manage_support_access",
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u16);

impl Permissions {
    /// No permission at all.
    pub const NONE: Permissions = Permissions(0);

    const fn of(list: &[Permission]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            bits |= list[i].bit();
            i += 1;
        }
        Permissions(bits)
    }

    /// Whether `p` is in the set.
    pub const fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// The set of `p` alone.
    pub const fn only(p: Permission) -> Self {
        Permissions(p.bit())
    }

    /// What both sets hold.
    #[must_use]
    pub const fn intersection(self, other: Permissions) -> Self {
        Permissions(self.0 & other.0)
    }

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: Permissions) -> Self {
        Permissions(self.0 | other.0)
    }

    /// The permissions in the set, in table order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// What a person holding `roles` may do: the union over the roles we know.
    pub fn for_roles<S: AsRef<str>>(roles: &[S]) -> Self {
        roles
            .iter()
            .filter_map(|r| Role::parse(r.as_ref()))
            .fold(Self::NONE, |acc, r| acc.union(r.permissions()))
    }

    /// What a staff member may do in a tenant under an impersonation session of `mode`.
    pub const fn for_impersonation(mode: ImpersonationMode, allow_export: bool) -> Self {
        use Permission as P;
        let read = Permissions::of(&[P::ReadData, P::Query, P::ReadBilling, P::ReadAudit]);
        let base = match mode {
            ImpersonationMode::ReadOnly => read,
            ImpersonationMode::ReadWrite => {
                read.union(Permissions::of(&[P::WriteData, P::ManageDatasets]))
            }
        };
        if allow_export {
            base.union(Permissions::of(&[P::ExportData]))
        } else {
            base
        }
    }

    /// What an API key with `scopes` may do.
    pub fn for_scopes(scopes: &[Scope]) -> Self {
        scopes
            .iter()
            .fold(Self::NONE, |acc, s| acc.union(s.permissions()))
    }
}

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::name))
            .finish()
    }
}

impl Serialize for Permissions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// A tenant role, from the token's roles claim (Auth0 organization member roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs the tenant.
    Owner,
    /// Administers it.
    Admin,
    /// Works with its data.
    Member,
    /// Reads and asks, changes nothing.
    Viewer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    /// The role a claim value names (exactly, lower case), if any.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The role's name in the roles claim.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// What the role may do.
    pub const fn permissions(self) -> Permissions {
        use Permission as P;
        match self {
            Role::Owner => Permissions::of(&P::ALL),
            Role::Admin => Permissions::of(&[
                P::ReadData,
                P::Query,
                P::WriteData,
                P::ManageDatasets,
                P::ManageApiKeys,
                P::ManageMembers,
                P::ReadBilling,
                P::ReadAudit,
                P::ExportData,
                P::OverseeSupport,
            ]),
            Role::Member => {
                Permissions::of(&[P::ReadData, P::Query, P::WriteData, P::ManageDatasets])
            }
            Role::Viewer => Permissions::of(&[P::ReadData, P::Query]),
        }
    }
}

/// What an API key was made for: chosen at creation, never changed afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read datasets and records, query and ask.
    Read,
    /// Ingest and delete records.
    Ingest,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 2] = [Scope::Read, Scope::Ingest];

    /// The scope a name stands for, if any.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The scope's name (in requests, listings and the database).
    pub const fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ingest => "ingest",
        }
    }

    /// What the scope grants.
    pub const fn permissions(self) -> Permissions {
        use Permission as P;
        match self {
            Scope::Read => Permissions::of(&[P::ReadData, P::Query]),
            Scope::Ingest => Permissions::of(&[P::WriteData]),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: Permissions) -> Vec<&'static str> {
        p.iter().map(Permission::name).collect()
    }

    #[test]
    fn the_role_and_scope_table_is_the_documented_one() {
        let all = names(Permissions::of(&Permission::ALL));
        assert_eq!(names(Role::Owner.permissions()), all);
        assert_eq!(
            names(Role::Admin.permissions()),
            &all[..all.len() - 1],
            "all but manage_support_access"
        );
        assert_eq!(
            names(Role::Member.permissions()),
            ["read_data", "query", "write_data", "manage_datasets"]
        );
        assert_eq!(names(Role::Viewer.permissions()), ["read_data", "query"]);
        assert_eq!(names(Scope::Read.permissions()), ["read_data", "query"]);
        assert_eq!(names(Scope::Ingest.permissions()), ["write_data"]);
    }

    #[test]
    fn impersonation_never_manages_keys_members_or_support() {
        use ImpersonationMode::*;
        assert_eq!(
            names(Permissions::for_impersonation(ReadOnly, false)),
            ["read_data", "query", "read_billing", "read_audit"]
        );
        assert_eq!(
            names(Permissions::for_impersonation(ReadWrite, false)),
            [
                "read_data",
                "query",
                "write_data",
                "manage_datasets",
                "read_billing",
                "read_audit"
            ]
        );
        for mode in [ReadOnly, ReadWrite] {
            let with_export = Permissions::for_impersonation(mode, true);
            assert!(with_export.contains(Permission::ExportData));
            assert!(!Permissions::for_impersonation(mode, false).contains(Permission::ExportData));
            for p in [
                Permission::ManageApiKeys,
                Permission::ManageMembers,
                Permission::OverseeSupport,
                Permission::ManageSupportAccess,
            ] {
                assert!(!with_export.contains(p), "{mode:?} {p:?}");
            }
        }
    }

    #[test]
    fn no_scope_manages_keys_or_members() {
        let every_scope = Permissions::for_scopes(&Scope::ALL);
        assert!(!every_scope.contains(Permission::ManageApiKeys));
        assert!(!every_scope.contains(Permission::ManageMembers));
    }

    #[test]
    fn roles_are_exact_names_and_unknown_ones_grant_nothing() {
        assert_eq!(Permissions::for_roles::<&str>(&[]), Permissions::NONE);
        for name in [
            "Admin", "ADMIN", " admin", "admin ", "owner\0", "analyst", "",
        ] {
            assert_eq!(
                Permissions::for_roles(&[name]),
                Permissions::NONE,
                "{name:?}"
            );
        }
        assert_eq!(
            Permissions::for_roles(&["viewer", "member"]),
            Role::Member.permissions()
        );
        assert_eq!(
            Permissions::for_roles(&["analyst", "viewer"]),
            Role::Viewer.permissions()
        );
    }

    #[test]
    fn names_round_trip_and_serialize_as_lists() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.name()), Some(s));
        }
        assert_eq!(Scope::parse("write"), None);
        assert_eq!(
            serde_json::to_value(Role::Viewer.permissions()).ok(),
            Some(serde_json::json!(["read_data", "query"]))
        );
        assert_eq!(
            format!("{:?}", Scope::Ingest.permissions()),
            "{\"write_data\"}"
        );
    }
}
