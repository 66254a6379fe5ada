import { useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api, sessionOpen, type AdminTenant, type ImpersonationSession } from "../api";
import { useAuth } from "../auth";
import { Empty, Head, Loading, Pager, ProblemView, When, useAction, useApi, useCursors } from "../ui";

function Health({ t }: { t: AdminTenant }) {
  const problems: string[] = [];
  if (t.status !== "active") problems.push(t.status);
  if (t.billing.customer_pending) problems.push("no Stripe customer");
  if (t.deliveries.failed > 0) problems.push(`${t.deliveries.failed} failed deliveries`);
  if ((t.last_reconciliation?.drift ?? 0) !== 0) problems.push(`drift ${t.last_reconciliation!.drift}`);
  if (t.embedding_backlog > 0) problems.push(`${t.embedding_backlog} chunks to embed`);
  return problems.length === 0 ? (
    <span className="badge good">healthy</span>
  ) : (
    <span className="badge warn">{problems.join(" · ")}</span>
  );
}

export function SupportTenants() {
  const [q, setQ] = useState("");
  const [search, setSearch] = useState("");
  const [status, setStatus] = useState("");
  const pages = useCursors();
  const qs = new URLSearchParams({ limit: "50" });
  if (search) qs.set("q", search);
  if (status) qs.set("status", status);
  const before = pages.current;
  if (before) qs.set("before", before);
  const list = useApi<{ tenants: AdminTenant[]; next_before: string | null }>(`/admin/v1/tenants?${qs}`);
  return (
    <>
      <h1>Tenants</h1>
      <form
        className="row wrap"
        aria-label="Find tenants"
        onSubmit={(e) => {
          e.preventDefault();
          pages.reset();
          setSearch(q.trim());
        }}
      >
        <input aria-label="Name, slug or organization" placeholder="name, slug or org_…" value={q} onChange={(e) => setQ(e.target.value)} />
        <select
          aria-label="Status"
          value={status}
          onChange={(e) => {
            pages.reset();
            setStatus(e.target.value);
          }}
        >
          <option value="">any status</option>
          <option value="active">active</option>
          <option value="suspended">suspended</option>
          <option value="closed">closed</option>
        </select>
        <button type="submit">Search</button>
      </form>
      <ProblemView error={list.error} />
      {list.loading && !list.data && <Loading what="tenants" />}
      {list.data &&
        (list.data.tenants.length === 0 ? (
          <Empty>No tenants{search || status ? " match" : " yet"}.</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <Head cols={["Tenant", "Plan", "Status", "Billing", "Drift", "Failed deliveries", "Embedding backlog", "Health"]} />
              <tbody>
                {list.data.tenants.map((t) => (
                  <tr key={t.id}>
                    <td>
                      <Link to={`/support/tenants/${t.id}`}>{t.name}</Link> <span className="muted small">{t.slug}</span>
                    </td>
                    <td>{t.plan}</td>
                    <td>{t.status}</td>
                    <td>{t.billing.status}</td>
                    <td className="num">{t.last_reconciliation?.drift ?? "—"}</td>
                    <td className="num">{t.deliveries.failed}</td>
                    <td className="num">{t.embedding_backlog}</td>
                    <td>
                      <Health t={t} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
      <Pager cursors={pages} next={list.data?.next_before} labels={["Newer", "Older"]} />
    </>
  );
}

export function SupportTenant() {
  const { tenant = "" } = useParams();
  const t = useApi<AdminTenant>(`/admin/v1/tenants/${encodeURIComponent(tenant)}`);
  return (
    <>
      <p className="crumbs">
        <Link to="/support">Tenants</Link> /
      </p>
      <ProblemView error={t.error} />
      {t.loading && !t.data && <Loading what="the tenant" />}
      {t.data && (
        <>
          <h1>{t.data.name}</h1>
          <section className="card">
            <h2>Health</h2>
            <Health t={t.data} />
            <dl className="meta">
              <dt>Status</dt>
              <dd>{t.data.status}</dd>
              <dt>Organization</dt>
              <dd>
                <code>{t.data.auth0_org_id}</code>
              </dd>
              <dt>Plan</dt>
              <dd>{t.data.plan}</dd>
              <dt>Members</dt>
              <dd>{t.data.members}</dd>
              <dt>Support access</dt>
              <dd>{t.data.support_access}</dd>
              <dt>Billing</dt>
              <dd>
                {t.data.billing.status} · customer {t.data.billing.customer_id ?? "pending"}
                {t.data.billing.customer_error ? ` · ${t.data.billing.customer_error}` : ""}
              </dd>
              <dt>Deliveries</dt>
              <dd>
                {t.data.deliveries.pending} pending · {t.data.deliveries.failed} failed · {t.data.deliveries.late_units} late units
              </dd>
              <dt>Last reconciliation</dt>
              <dd>
                {t.data.last_reconciliation ? (
                  <>
                    <When at={t.data.last_reconciliation.at} /> · {t.data.last_reconciliation.days_not_in_sync} days not in sync · drift{" "}
                    {t.data.last_reconciliation.drift}
                  </>
                ) : (
                  "never"
                )}
              </dd>
              <dt>Usage this period</dt>
              <dd>
                {Object.entries(t.data.usage_this_period.meters)
                  .map(([m, v]) => `${m} ${v}`)
                  .join(" · ") || "none"}
              </dd>
            </dl>
          </section>
          <section className="card">
            <h2>Open sessions</h2>
            <Sessions path={`/admin/v1/impersonations?tenant=${t.data.id}&open=true`} names={{ [t.data.id]: t.data.name }} />
          </section>
          <StartImpersonation tenant={t.data} />
        </>
      )}
    </>
  );
}

function StartImpersonation({ tenant }: { tenant: AdminTenant }) {
  const { startImpersonation } = useAuth();
  const navigate = useNavigate();
  const [reason, setReason] = useState("");
  const [ticket, setTicket] = useState("");
  const [minutes, setMinutes] = useState(15);
  const [mode, setMode] = useState<"read_only" | "read_write">("read_only");
  const { error, run } = useAction();
  const [waiting, setWaiting] = useState<ImpersonationSession | null>(null);
  const start = async (e: FormEvent) => {
    e.preventDefault();
    await run(async () => {
      const s = await api<ImpersonationSession>("/admin/v1/impersonations", {
        asStaff: true,
        body: { tenant: tenant.id, reason: reason.trim(), minutes, mode, ...(ticket.trim() ? { ticket: ticket.trim() } : {}) },
      });
      if (s.state !== "active") {
        setWaiting(s);
        return;
      }
      await startImpersonation({ id: s.id, tenantId: tenant.id, tenantName: tenant.name, mode: s.mode, expiresAt: s.expires_at });
      navigate("/datasets");
    });
  };
  return (
    <form className="card" onSubmit={(e) => void start(e)} aria-label="Start impersonation">
      <h2>Impersonate</h2>
      <p className="muted small">The tenant sees the session, its reason and every request in its audit log.</p>
      <label>
        Reason
        <textarea value={reason} onChange={(e) => setReason(e.target.value)} required minLength={10} maxLength={500} rows={2} />
      </label>
      <label>
        Ticket
        <input value={ticket} onChange={(e) => setTicket(e.target.value)} maxLength={100} placeholder="SUP-2001" />
      </label>
      <label>
        Minutes (at most 60)
        <input type="number" min={1} max={60} value={minutes} onChange={(e) => setMinutes(Number(e.target.value))} className="narrow" />
      </label>
      <label>
        Mode
        <select value={mode} onChange={(e) => setMode(e.target.value as "read_only" | "read_write")}>
          <option value="read_only">read-only</option>
          <option value="read_write">read-write (needs a second approver)</option>
        </select>
      </label>
      <ProblemView error={error} />
      {waiting && (
        <p className="notice warn" role="status">
          Session {waiting.id} waits for approval; once approved, enter it from the open sessions above (reload).
        </p>
      )}
      <button type="submit">Start session</button>
    </form>
  );
}

export function SupportSessions() {
  return (
    <>
      <h1>Impersonation sessions</h1>
      <Sessions path="/admin/v1/impersonations" />
    </>
  );
}

/** Sessions (newest first) with what staff may do with each: enter an active one, approve one
 * waiting for a second support_admin, end one not over. The API decides who may. */
function Sessions({ path, names = {} }: { path: string; names?: Record<string, string> }) {
  const { startImpersonation, subject } = useAuth();
  const navigate = useNavigate();
  const pages = useCursors();
  const before = pages.current;
  const list = useApi<{ sessions: ImpersonationSession[]; next_before: string | null }>(
    before ? `${path}${path.includes("?") ? "&" : "?"}before=${encodeURIComponent(before)}` : path,
  );
  const { error, run } = useAction();
  const act = (s: ImpersonationSession, action: "approve" | "end") =>
    run(async () => {
      await api(`/admin/v1/impersonations/${s.id}/${action}`, { method: "POST", asStaff: true });
      list.reload();
    });
  const enter = (s: ImpersonationSession) =>
    run(async () => {
      const name = names[s.tenant_id] ?? (await api<AdminTenant>(`/admin/v1/tenants/${s.tenant_id}`, { asStaff: true })).name;
      await startImpersonation({ id: s.id, tenantId: s.tenant_id, tenantName: name, mode: s.mode, expiresAt: s.expires_at });
      navigate("/datasets");
    });
  return (
    <>
      <ProblemView error={list.error ?? error} />
      {list.loading && !list.data && <Loading what="sessions" />}
      {list.data &&
        (list.data.sessions.length === 0 ? (
          <Empty>No sessions.</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <Head cols={["Started", "Tenant", "Staff", "Reason", "Mode", "State", "Ends", ""]} />
              <tbody>
                {list.data.sessions.map((s) => (
                  <tr key={s.id}>
                    <td>
                      <When at={s.started_at} />
                    </td>
                    <td>
                      <Link to={`/support/tenants/${s.tenant_id}`}>{names[s.tenant_id] ?? `${s.tenant_id.slice(0, 8)}…`}</Link>
                    </td>
                    <td>{s.staff_id}</td>
                    <td>
                      <Reason s={s} />
                    </td>
                    <td>{s.mode.replace("_", "-")}</td>
                    <td>
                      {s.state.replace("_", " ")}
                      {s.state === "awaiting_approval" && (
                        <span className="muted small">
                          {" "}
                          ({[
                            s.needs_staff_approval && !s.staff_approved_by ? "a second support_admin" : "",
                            s.needs_tenant_approval && !s.tenant_approved_by ? "the tenant" : "",
                          ]
                            .filter(Boolean)
                            .join(" and ")}
                          )
                        </span>
                      )}
                    </td>
                    <td>
                      <When at={s.expires_at} />
                    </td>
                    <td className="actions">
                      {s.state === "active" && s.staff_id === subject && <button onClick={() => void enter(s)}>Enter</button>}{" "}
                      {s.state === "awaiting_approval" && s.needs_staff_approval && !s.staff_approved_by && (
                        <button className="secondary" onClick={() => void act(s, "approve")}>
                          Approve
                        </button>
                      )}{" "}
                      {sessionOpen(s) && (
                        <button className="secondary" onClick={() => void act(s, "end")}>
                          End
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
      {(pages.depth > 0 || list.data?.next_before) && <Pager cursors={pages} next={list.data?.next_before} labels={["Newer", "Older"]} />}
    </>
  );
}

/** A session's reason, with its ticket. */
export function Reason({ s }: { s: ImpersonationSession }) {
  return (
    <>
      {s.reason}
      {s.ticket ? <span className="muted small"> ({s.ticket})</span> : null}
    </>
  );
}
