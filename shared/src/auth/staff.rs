//! Support staff: people of the staff Auth0 organization (`SUPPORT_ORG_ID`), signed in like
//! tenants' people, with the roles `support` and `support_admin`. A staff token is never a tenant
//! principal (tenant routes refuse it), and nothing but a staff token reaches the admin routes.
//!
//! | staff permission | `support` | `support_admin` |
//! |------------------|:---------:|:---------------:|
//! | `support_read`   |     ✓     |        ✓        |
//! | `support_admin`  |           |        ✓        |

use serde::Serialize;

/// What an admin route may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StaffPermission {
    /// Read the tenant list and a tenant's operational detail (counts and states).
    SupportRead,
    /// Change a tenant: suspend, resume, plan.
    SupportAdmin,
}

impl StaffPermission {
    /// The stable name, as the OpenAPI document's `x-permission` states it.
    pub fn name(self) -> &'static str {
        match self {
            StaffPermission::SupportRead => "support_read",
            StaffPermission::SupportAdmin => "support_admin",
        }
    }
}

/// An authenticated staff member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Staff {
    /// The Auth0 `sub`.
    pub id: String,
    /// Their staff roles (only `support` and `support_admin` count).
    pub roles: Vec<String>,
}

impl Staff {
    /// Whether the staff member holds `p`.
    pub fn can(&self, p: StaffPermission) -> bool {
        let has = |r: &str| self.roles.iter().any(|x| x == r);
        match p {
            StaffPermission::SupportRead => has("support") || has("support_admin"),
            StaffPermission::SupportAdmin => has("support_admin"),
        }
    }

    /// Whether the roles make them staff at all.
    pub fn is_staff(&self) -> bool {
        self.can(StaffPermission::SupportRead)
    }

    /// The actor id their actions are recorded under: `staff:<sub>`.
    pub fn actor_id(&self) -> String {
        format!("staff:{}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staff(roles: &[&str]) -> Staff {
        Staff {
            id: "auth0|s".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn roles_grant_exactly_the_table() {
        use StaffPermission::*;
        for (roles, read, admin) in [
            (&["support"][..], true, false),
            (&["support_admin"][..], true, true),
            (&["support", "support_admin"][..], true, true),
            (&["admin"][..], false, false),
            (&["owner"][..], false, false),
            (&["Support"][..], false, false),
            (&["support_admin "][..], false, false),
            (&[][..], false, false),
        ] {
            let s = staff(roles);
            assert_eq!(
                (s.can(SupportRead), s.can(SupportAdmin), s.is_staff()),
                (read, admin, read),
                "{roles:?}"
            );
        }
        assert_eq!(staff(&[]).actor_id(), "staff:auth0|s");
    }
}
