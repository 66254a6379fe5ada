import { useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api, type AdminTenant, type ImpersonationSession } from "../api";
import { useAuth } from "../auth";
import { Empty, Loading, ProblemView, When, useApi, Head } from "../ui";

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
  const list = useApi<{ tenants: AdminTenant[]; next_before: string | null }>("/admin/v1/tenants");
  return (
    <>
      <h1>Tenants</h1>
      <ProblemView error={list.error} />
      {list.loading && !list.data && <Loading what="tenants" />}
      {list.data &&
        (list.data.tenants.length === 0 ? (
          <Empty>No tenants yet.</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <Head cols={["Tenant", "Plan", "Billing", "Drift", "Failed deliveries", "Embedding backlog", "Health"]} />
              <tbody>
                {list.data.tenants.map((t) => (
                  <tr key={t.id}>
                    <td>
                      <Link to={`/support/tenants/${t.id}`}>{t.name}</Link> <span className="muted small">{t.slug}</span>
                    </td>
                    <td>{t.plan}</td>
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
  const [error, setError] = useState<unknown>(null);
  const [waiting, setWaiting] = useState<ImpersonationSession | null>(null);
  const start = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
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
    } catch (err) {
      setError(err);
    }
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
          Session {waiting.id} waits for approval ({waiting.state.replace("_", " ")}); it starts once approved.
        </p>
      )}
      <button type="submit">Start session</button>
    </form>
  );
}

export function SupportSessions() {
  const list = useApi<{ sessions: ImpersonationSession[] }>("/admin/v1/impersonations");
  return (
    <>
      <h1>Impersonation sessions</h1>
      <ProblemView error={list.error} />
      {list.loading && !list.data && <Loading what="sessions" />}
      {list.data &&
        (list.data.sessions.length === 0 ? (
          <Empty>No sessions.</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <Head cols={["Started", "Tenant", "Staff", "Reason", "Mode", "State"]} />
              <tbody>
                {list.data.sessions.map((s) => (
                  <tr key={s.id}>
                    <td>
                      <When at={s.started_at} />
                    </td>
                    <td>
                      <Link to={`/support/tenants/${s.tenant_id}`}>{s.tenant_id.slice(0, 8)}…</Link>
                    </td>
                    <td>{s.staff_id}</td>
                    <td>
                      {s.reason}
                      {s.ticket ? <span className="muted small"> ({s.ticket})</span> : null}
                    </td>
                    <td>{s.mode}</td>
                    <td>{s.state}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
    </>
  );
}
