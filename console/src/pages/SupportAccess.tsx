import { useEffect, useState } from "react";
import { Link } from "react-router-dom";
import { api, sessionOpen, type ImpersonationSession } from "../api";
import { Reason } from "./Support";
import { useAuth } from "../auth";
import { Empty, Head, Loading, Pager, ProblemView, When, useAction, useApi, useCursors } from "../ui";

type Access = "off" | "read_only" | "ask";

const ACCESS: [Access, string][] = [
  ["read_only", "Read-only sessions start without asking; read-write ones are refused"],
  ["ask", "Every session waits for an admin here to approve it"],
  ["off", "Support may not impersonate at all (live sessions stop at once)"],
];

/** The tenant's side of support: whether support may come in, and its sessions (who, why,
 * how many requests), to approve or end. */
export function SupportAccess() {
  const { can } = useAuth();
  const setting = useApi<{ support_access: Access }>("/v1/settings/support-access");
  const pages = useCursors();
  const sessions = useApi<{ sessions: ImpersonationSession[]; next_before: string | null }>(
    `/v1/impersonations${pages.current ? `?before=${encodeURIComponent(pages.current)}` : ""}`,
  );
  const [choice, setChoice] = useState<Access>("read_only");
  const [saved, setSaved] = useState(false);
  const { error, run } = useAction();
  useEffect(() => {
    if (setting.data) setChoice(setting.data.support_access);
  }, [setting.data]);
  const save = () => {
    setSaved(false);
    return run(async () => {
      await api("/v1/settings/support-access", { method: "PUT", body: { support_access: choice } });
      setSaved(true);
      setting.reload();
      sessions.reload();
    });
  };
  const act = (s: ImpersonationSession, action: "approve" | "end") =>
    run(async () => {
      await api(`/v1/impersonations/${s.id}/${action}`, { method: "POST" });
      sessions.reload();
    });
  return (
    <>
      <h1>Support access</h1>
      <section className="card">
        <h2>May support come in?</h2>
        <ProblemView error={setting.error} />
        {!setting.data && !setting.error && <Loading what="the setting" />}
        {setting.data && (
          <form
            aria-label="Support access"
            onSubmit={(e) => {
              e.preventDefault();
              void save();
            }}
          >
            <fieldset disabled={!can("manage_support_access")}>
              <legend>Support access</legend>
              {ACCESS.map(([value, label]) => (
                <label className="inline" key={value}>
                  <input type="radio" name="support_access" value={value} checked={choice === value} onChange={() => setChoice(value)} />{" "}
                  {label}
                </label>
              ))}
            </fieldset>
            {can("manage_support_access") ? (
              <button type="submit" disabled={choice === setting.data.support_access}>
                Save
              </button>
            ) : (
              <p className="muted small">Only an owner changes this.</p>
            )}
            {saved && (
              <span className="muted" role="status">
                {" "}
                Saved.
              </span>
            )}
          </form>
        )}
      </section>
      <ProblemView error={error} />
      <section className="card">
        <h2>Sessions</h2>
        <ProblemView error={sessions.error} />
        {sessions.loading && !sessions.data && <Loading what="sessions" />}
        {sessions.data &&
          (sessions.data.sessions.length === 0 ? (
            <Empty>Support has not impersonated anyone here.</Empty>
          ) : (
            <div className="table-wrap">
              <table>
                <Head cols={["Started", "Who", "Reason", "Mode", "State", "Requests", ""]} />
                <tbody>
                  {sessions.data.sessions.map((s) => (
                    <tr key={s.id}>
                      <td>
                        <When at={s.started_at} />
                      </td>
                      <td>{s.staff_id}</td>
                      <td>
                        <Reason s={s} />
                      </td>
                      <td>{s.mode.replace("_", "-")}</td>
                      <td>{s.state.replace("_", " ")}</td>
                      <td className="num">
                        <Link to={`/audit?impersonation=${s.id}`}>{s.requests ?? 0}</Link>
                      </td>
                      <td className="actions">
                        {s.state === "awaiting_approval" && s.needs_tenant_approval && !s.tenant_approved_by && (
                          <button onClick={() => void act(s, "approve")}>Approve</button>
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
        {(pages.depth > 0 || sessions.data?.next_before) && (
          <Pager cursors={pages} next={sessions.data?.next_before} labels={["Newer", "Older"]} />
        )}
      </section>
    </>
  );
}
