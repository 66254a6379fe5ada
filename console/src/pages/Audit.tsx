import { useState } from "react";
import type { AuditEvent } from "../api";
import { Empty, Loading, ProblemView, When, useApi, Head } from "../ui";

interface Verify {
  intact: boolean;
  entries: number;
  last_seq: number;
  first_broken: { seq: number; reason?: string } | null;
}

export function Audit() {
  const [cursors, setCursors] = useState<string[]>([]);
  const [impersonation, setImpersonation] = useState("");
  const cursor = cursors.at(-1);
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
          <button className="secondary" onClick={() => setImpersonation("")}>
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
                        <button className="link" onClick={() => { setCursors([]); setImpersonation(e.impersonation_id!); }}>
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
      <div className="row">
        <button className="secondary" disabled={cursors.length === 0} onClick={() => setCursors((c) => c.slice(0, -1))}>
          Newer
        </button>
        <button className="secondary" disabled={!page.data?.next_cursor} onClick={() => setCursors((c) => [...c, page.data!.next_cursor!])}>
          Older
        </button>
      </div>
    </>
  );
}
