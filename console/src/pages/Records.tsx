import { useState } from "react";
import { Link, useNavigate, useParams, useSearchParams } from "react-router-dom";
import { api, type StoredRecord } from "../api";
import { useAuth } from "../auth";
import { Loading, ProblemView, When, formatCell, useApi } from "../ui";

/**
 * One record. Opened from a citation, `?version=N` names the version the answer read: the page
 * says whether the record is still at that version (Tenantry keeps each record's current
 * version; a changed record's earlier data is not kept).
 */
export function RecordView() {
  const { dataset = "", key = "" } = useParams();
  const [params] = useSearchParams();
  const cited = params.get("version");
  const { can } = useAuth();
  const navigate = useNavigate();
  const path = `/v1/datasets/${encodeURIComponent(dataset)}/records/${encodeURIComponent(key)}`;
  const rec = useApi<{ dataset: string; record: StoredRecord }>(path);
  const [deleteError, setDeleteError] = useState<unknown>(null);
  const remove = async () => {
    try {
      await api(path, { method: "DELETE" });
      navigate(`/datasets/${encodeURIComponent(dataset)}`);
    } catch (e) {
      setDeleteError(e);
    }
  };
  const r = rec.data?.record;
  return (
    <>
      <p className="crumbs">
        <Link to="/datasets">Datasets</Link> / <Link to={`/datasets/${encodeURIComponent(dataset)}`}>{dataset}</Link> /
      </p>
      <h1>
        Record <code>{key}</code>
      </h1>
      <ProblemView error={rec.error} />
      {rec.loading && !rec.data && <Loading what="the record" />}
      {r && (
        <section className="card">
          {cited !== null &&
            (Number(cited) === r.version ? (
              <p className="notice ok" data-testid="version-match">
                This is version {r.version}, the version the answer cited.
              </p>
            ) : (
              <p className="notice warn" data-testid="version-changed">
                The answer cited version {cited}; the record has changed since and is now at version {r.version}. Only the
                current version is kept.
              </p>
            ))}
          <dl className="meta">
            <dt>Version</dt>
            <dd data-testid="record-version">{r.version}</dd>
            <dt>Created</dt>
            <dd>
              <When at={r.created_at} />
            </dd>
            <dt>Updated</dt>
            <dd>
              <When at={r.updated_at} />
            </dd>
          </dl>
          <table>
            <tbody>
              {Object.entries(r.data).map(([k, v]) => (
                <tr key={k}>
                  <th scope="row">{k}</th>
                  <td className="record-value">{formatCell(v)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {can("write_data") && (
            <button className="danger" onClick={() => void remove()}>
              Delete record
            </button>
          )}
          <ProblemView error={deleteError} />
        </section>
      )}
    </>
  );
}
