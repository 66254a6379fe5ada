import type { Permission } from "../api";
import { useAuth } from "../auth";
import { Empty, Head, Loading, Pager, ProblemView, When, useApi, useCursors } from "../ui";

interface Member {
  member_id: string;
  auth0_user_id: string;
  email: string | null;
  role: string;
  created_at: string;
}

// What each role may do (the API's table: README "Permissions").
const MATRIX: [Permission, string, string[]][] = [
  ["read_data", "Read datasets and records", ["owner", "admin", "member", "viewer"]],
  ["query", "Run queries and ask questions", ["owner", "admin", "member", "viewer"]],
  ["write_data", "Ingest and delete records", ["owner", "admin", "member"]],
  ["manage_datasets", "Create and delete datasets", ["owner", "admin", "member"]],
  ["manage_api_keys", "Create and revoke API keys", ["owner", "admin"]],
  ["manage_members", "See and manage members", ["owner", "admin"]],
  ["read_billing", "Usage and billing", ["owner", "admin"]],
  ["read_audit", "The audit log", ["owner", "admin"]],
  ["export_data", "Export all data", ["owner", "admin"]],
  ["oversee_support", "See, approve and end support sessions", ["owner", "admin"]],
  ["manage_support_access", "Decide whether support may come in", ["owner"]],
];
const ROLES = ["owner", "admin", "member", "viewer"];

export function Members() {
  const { identity, can } = useAuth();
  const pages = useCursors();
  const after = pages.current;
  const members = useApi<{ members: Member[]; next_after: string | null }>(
    can("manage_members") ? `/v1/members?limit=100${after ? `&after=${after}` : ""}` : null,
  );
  if (!identity || identity.kind === "staff") return null;
  const p = identity.me.principal;
  return (
    <>
      <h1>Members &amp; roles</h1>
      <section className="card">
        <h2>You</h2>
        <dl className="meta">
          <dt>Signed in as</dt>
          <dd>{p.id}</dd>
          <dt>Roles</dt>
          <dd data-testid="my-roles">{(p.roles ?? []).join(", ") || "none"}</dd>
          <dt>Tenant</dt>
          <dd>
            {identity.me.tenant.name} ({identity.me.tenant.plan} plan, {identity.me.tenant.status})
          </dd>
        </dl>
      </section>
      {can("manage_members") && (
        <section className="card">
          <h2>Members</h2>
          <p className="muted small">People join and leave through your organization in the identity provider; roles are assigned there.</p>
          <ProblemView error={members.error} />
          {members.loading && !members.data && <Loading what="members" />}
          {members.data &&
            (members.data.members.length === 0 ? (
              <Empty>No members have been synced from the identity provider yet.</Empty>
            ) : (
              <div className="table-wrap">
                <table>
                  <Head cols={["Member", "Email", "Role", "Since"]} />
                  <tbody>
                    {members.data.members.map((m) => (
                      <tr key={m.member_id}>
                        <td>{m.auth0_user_id}</td>
                        <td>{m.email ?? "—"}</td>
                        <td>{m.role}</td>
                        <td>
                          <When at={m.created_at} />
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            ))}
          {(pages.depth > 0 || members.data?.next_after) && <Pager cursors={pages} next={members.data?.next_after} />}
        </section>
      )}
      <section className="card">
        <h2>What each role may do</h2>
        <div className="table-wrap">
          <table className="matrix">
            <thead>
              <tr>
                <th scope="col">Permission</th>
                {ROLES.map((r) => (
                  <th key={r} scope="col">
                    {r}
                  </th>
                ))}
                <th scope="col">You</th>
              </tr>
            </thead>
            <tbody>
              {MATRIX.map(([perm, label, roles]) => (
                <tr key={perm}>
                  <th scope="row">
                    {label} <code className="small">{perm}</code>
                  </th>
                  {ROLES.map((r) => (
                    <td key={r} aria-label={roles.includes(r) ? "yes" : "no"}>
                      {roles.includes(r) ? "✓" : ""}
                    </td>
                  ))}
                  <td aria-label={can(perm) ? "yes" : "no"}>{can(perm) ? "✓" : ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
    </>
  );
}
