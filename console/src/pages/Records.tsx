import { useState } from "react";
import { Link, useNavigate, useParams, useSearchParams } from "react-router-dom";
import { api, type StoredRecord } from "../api";
import { useAuth } from "../auth";
import { Head, Loading, Pager, ProblemView, When, formatCell, useApi, useCursors } from "../ui";

interface Version {
  version: number;
  data: Record<string, unknown>;
  written_at: string;
  superseded_at: string | null;
}

interface Versions {
  versions: Version[];
  next_before: number | null;
}

/**
 * One record and its versions. `?version=N` (a citation's link, or a pick from the list) shows
 * version N: the current one, or one an update replaced, saying which it is.
 */
export function RecordView() {
  const { dataset = "", key = "" } = useParams();
  const [params] = useSearchParams();
  const picked = params.get("version");
  const { can } = useAuth();
  const navigate = useNavigate();
  const path = `/v1/datasets/${encodeURIComponent(dataset)}/records/${encodeURIComponent(key)}`;
  const rec = useApi<{ dataset: string; record: StoredRecord }>(path);
  const pages = useCursors();
  const history = useApi<Versions>(`${path}/versions?limit=20${pages.current ? `&before=${pages.current}` : ""}`);
  const wanted = picked !== null && /^\d+$/.test(picked) ? Number(picked) : null;
  // A version older than the list's first page is fetched on its own.
  const listed = history.data?.versions.find((v) => v.version === wanted);
  const older = useApi<Versions>(
    wanted !== null && history.data && !listed ? `${path}/versions?before=${wanted + 1}&limit=1` : null,
  );
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
  const fetched = older.data?.versions.find((v) => v.version === wanted);
  const shown: Version | undefined =
    wanted === null || wanted === r?.version
      ? r && { version: r.version, data: r.data, written_at: r.updated_at, superseded_at: null }
      : (listed ?? fetched);
  // Not kept: the versions below it came back without it. (A failed request is shown as its
  // problem, not as "not kept".)
  const missing = wanted !== null && !!r && !shown && !!older.data;
  const failed = wanted !== null && !!r && !shown && !!(history.error || older.error);
  // Asked for a version not shown yet: say so rather than show the current one under its number.
  const finding = wanted !== null && !!r && !shown && !missing && !failed;
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
          {wanted !== null && shown && shown.version === r.version && (
            <p className="notice ok" data-testid="version-match">
              This is version {r.version}, the current one.
            </p>
          )}
          {wanted !== null && shown && shown.version !== r.version && (
            <p className="notice warn" data-testid="version-changed">
              This is version {shown.version}; the record has changed since and is now at version {r.version}.{" "}
              <Link to={`/datasets/${encodeURIComponent(dataset)}/records/${encodeURIComponent(key)}`}>Show the current version</Link>
            </p>
          )}
          {missing && (
            <p className="notice bad" data-testid="version-missing">
              Version {picked} of this record is not kept (a record keeps its last 100 replaced versions, from when
              Tenantry began keeping them; a record deleted and written again starts again at 1). The current
              version, {r.version}, is below.
            </p>
          )}
          {finding && <Loading what={`version ${picked}`} />}
          {failed && <ProblemView error={history.error || older.error} />}
          {!finding && (
          <>
          <dl className="meta">
            <dt>Version</dt>
            <dd data-testid="record-version">{(shown ?? { version: r.version }).version}</dd>
            <dt>Written</dt>
            <dd>
              <When at={shown?.written_at ?? r.updated_at} />
            </dd>
            <dt>First written</dt>
            <dd>
              <When at={r.created_at} />
            </dd>
            {shown?.superseded_at && (
              <>
                <dt>Replaced</dt>
                <dd>
                  <When at={shown.superseded_at} />
                </dd>
              </>
            )}
          </dl>
          <div className="table-wrap">
          <table>
            <tbody>
              {Object.entries((shown ?? { data: r.data }).data).map(([k, v]) => (
                <tr key={k}>
                  <th scope="row">{k}</th>
                  <td className="record-value">{formatCell(v)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          </div>
          </>
          )}
          {can("write_data") && (
            <button className="danger" onClick={() => void remove()}>
              Delete record
            </button>
          )}
          <ProblemView error={deleteError} />
        </section>
      )}
      {r && (
        <section className="card">
          <h2>Versions</h2>
          <ProblemView error={history.error} />
          {history.loading && !history.data && <Loading what="versions" />}
          {history.data && (
            <div className="table-wrap">
              <table className="versions-table">
                <Head cols={["Version", "Written", "Replaced", ""]} />
                <tbody>
                  {history.data.versions.map((v) => (
                    <tr key={v.version} aria-current={v.version === shown?.version ? "true" : undefined}>
                      <td className="num">{v.version}</td>
                      <td>
                        <When at={v.written_at} />
                      </td>
                      <td>{v.superseded_at ? <When at={v.superseded_at} /> : "current"}</td>
                      <td>
                        {v.version === shown?.version ? (
                          <span className="muted">shown</span>
                        ) : (
                          <Link to={`?version=${v.version}`} aria-label={`Show version ${v.version}`}>
                            Show
                          </Link>
                        )}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {(pages.depth > 0 || history.data.next_before !== null) && (
                <Pager cursors={pages} next={history.data.next_before?.toString()} labels={["Newer", "Older"]} />
              )}
            </div>
          )}
        </section>
      )}
    </>
  );
}
