import { useState } from "react";
import { useSearchParams } from "react-router-dom";
import type { AuditEvent } from "../api";
import { Empty, Head, Loading, Pager, ProblemView, When, useApi, useCursors } from "../ui";

interface Verify {
  intact: boolean;
  entries: number;
  last_seq: number;
  first_broken: { seq: number; reason?: string } | null;
}

export function Audit() {
  const cursors = useCursors();
  // ?impersonation=<session id> (from the support access page) shows that session's entries.
  const [params] = useSearchParams();
  const [impersonation, setImpersonation] = useState(params.get("impersonation") ?? "");
  const cursor = cursors.current;
  const qs = new URLSearchParams({ limit: "50" });
  if (cursor) qs.set("cursor", cursor);
  if (impersonation) qs.set("impersonation", impersonation);
  const page = useApi<{ events: AuditEvent[]; next_cursor: string | null }>(`/v1/audit?${qs}`);
  const verify = useApi<Verify>("/v1/audit/verify");
  return (
    <>
      <h1>Audit log</h1>
      <section className="card">
        <h2>Chain</h2>
        {verify.error ? (
          <ProblemView error={verify.error} />
        ) : !verify.data ? (
          <Loading what="the verification" />
        ) : verify.data.intact ? (
          <p className="notice ok" data-testid="chain-status">
            Chain intact: {verify.data.entries} entries verified, up to #{verify.data.last_seq}.
          </p>
        ) : (
          <p className="notice bad" data-testid="chain-status">
            Chain broken at entry #{verify.data.first_broken?.seq}
            {verify.data.first_broken?.reason ? `: ${verify.data.first_broken.reason}` : ""}.
          </p>
        )}
      </section>
      {impersonation && (
        <p className="notice">
          Entries of support session <code>{impersonation}</code> only.{" "}
          <button
            className="secondary"
            onClick={() => {
              cursors.reset();
              setImpersonation("");
            }}
          >
            Show all
          </button>
        </p>
      )}
      <ProblemView error={page.error} />
      {page.loading && !page.data && <Loading what="entries" />}
      {page.data &&
        (page.data.events.length === 0 ? (
          <Empty>No entries.</Empty>
        ) : (
          <div className="table-wrap">
            <table className="audit-table">
              <Head cols={["#", "When", "Action", "Actor", "Target", "Details", "Support session"]} />
              <tbody>
                {page.data.events.map((e) => (
                  <tr key={e.seq}>
                    <td className="num">{e.seq}</td>
                    <td>
                      <When at={e.occurred_at} />
                    </td>
                    <td>
                      <code>{e.action}</code>
                    </td>
                    <td>{e.actor}</td>
                    <td>{e.target ?? "—"}</td>
                    <td className="small">
                      <code>{Object.keys(e.details ?? {}).length ? JSON.stringify(e.details) : ""}</code>
                    </td>
                    <td>
                      {e.impersonation_id ? (
                        <button className="link" onClick={() => { cursors.reset(); setImpersonation(e.impersonation_id!); }}>
                          {e.impersonation_id.slice(0, 8)}…
                        </button>
                      ) : (
                        "—"
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
      <Pager cursors={cursors} next={page.data?.next_cursor} labels={["Newer", "Older"]} />
    </>
  );
}
