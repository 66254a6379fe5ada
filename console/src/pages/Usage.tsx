import { Bar, BarChart, CartesianGrid, Cell, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { Empty, Loading, ProblemView, When, useApi } from "../ui";

interface Meter {
  meter: string;
  unit: string;
  recorded: number;
  acknowledged: number;
  pending: number;
  unsent: number;
  refused: number;
  late: number;
  entitlement?: { included: number | null; used: number; remaining: number | null; soft_limit_reached: boolean; hard_limit_reached: boolean };
}

interface UsageView {
  period?: { start: string; end: string; source: string };
  meters: Meter[];
  billing: { adapter: string; customer: { status: string; customer_id: string | null; last_invoice_status: string | null } | null };
  last_reconciliation: { at: string; actions: Record<string, number>; days_checked: number; issues: unknown[] } | null;
  awaiting_invoice: unknown[];
}

export function Usage() {
  const usage = useApi<UsageView>("/v1/usage");
  if (usage.error) return <ProblemView error={usage.error} />;
  if (!usage.data) return <Loading what="usage" />;
  const u = usage.data;
  return (
    <>
      <h1>Usage &amp; billing</h1>
      <section className="card">
        <h2>This period</h2>
        {u.period && (
          <p>
            <When at={u.period.start} /> to <When at={u.period.end} /> <span className="muted">({u.period.source.replace("_", " ")})</span>
          </p>
        )}
        <div className="meter-charts">
          {u.meters.map((m) => (
            <MeterChart key={m.meter} m={m} />
          ))}
        </div>
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                {["Meter", "Recorded", "Acknowledged", "Pending", "Unsent", "Refused", "Late", "Included", "Remaining"].map((h) => (
                  <th key={h} scope="col">
                    {h}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {u.meters.map((m) => (
                <tr key={m.meter}>
                  <td>
                    {m.meter} <span className="muted small">{m.unit}</span>
                  </td>
                  <td className="num">{m.recorded}</td>
                  <td className="num">{m.acknowledged}</td>
                  <td className="num">{m.pending}</td>
                  <td className="num">{m.unsent}</td>
                  <td className="num">{m.refused}</td>
                  <td className="num">{m.late}</td>
                  <td className="num">{m.entitlement?.included ?? "—"}</td>
                  <td className="num">
                    {m.entitlement?.remaining ?? "—"}
                    {m.entitlement?.hard_limit_reached && <span className="badge bad"> limit reached</span>}
                    {!m.entitlement?.hard_limit_reached && m.entitlement?.soft_limit_reached && <span className="badge warn"> over included</span>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section className="card">
        <h2>Billing</h2>
        <dl className="meta">
          <dt>Billing provider</dt>
          <dd>{u.billing.adapter}</dd>
          <dt>Subscription</dt>
          <dd>{u.billing.customer?.status ?? "no billing customer yet"}</dd>
          <dt>Last invoice</dt>
          <dd>{u.billing.customer?.last_invoice_status ?? "—"}</dd>
          <dt>Periods awaiting their invoice</dt>
          <dd>{u.awaiting_invoice.length}</dd>
        </dl>
        <h3>Last reconciliation</h3>
        {u.last_reconciliation ? (
          <p data-testid="last-reconciliation">
            <When at={u.last_reconciliation.at} /> · {u.last_reconciliation.days_checked} days checked ·{" "}
            {Object.entries(u.last_reconciliation.actions)
              .map(([k, v]) => `${v} ${k.replace("_", " ")}`)
              .join(", ") || "all in sync"}
          </p>
        ) : (
          <Empty>Not reconciled yet.</Empty>
        )}
      </section>
    </>
  );
}

const STAGES: [keyof Meter, string, string][] = [
  ["recorded", "recorded", "#2563eb"],
  ["acknowledged", "acknowledged", "#16a34a"],
  ["pending", "pending", "#d97706"],
  ["unsent", "unsent", "#9ca3af"],
];

/** One meter this period, in its own unit: recorded in the ledger against what the billing
 * provider acknowledged, and what is still on its way. */
function MeterChart({ m }: { m: Meter }) {
  const data = STAGES.map(([k, label, color]) => ({ stage: label, value: Number(m[k] ?? 0), color }));
  return (
    <figure className="chart meter-chart" aria-label={`${m.meter}: recorded ${m.recorded}, acknowledged ${m.acknowledged}`}>
      <figcaption>
        <strong>{m.meter}</strong> <span className="muted small">{m.unit}</span>
      </figcaption>
      <ResponsiveContainer width="100%" height={150}>
        <BarChart data={data} layout="vertical" margin={{ top: 5, right: 12, bottom: 5, left: 0 }}>
          <CartesianGrid strokeDasharray="3 3" horizontal={false} />
          <XAxis type="number" allowDecimals={false} tick={{ fontSize: 11 }} />
          <YAxis type="category" dataKey="stage" width={92} tick={{ fontSize: 11 }} interval={0} />
          <Tooltip />
          <Bar dataKey="value" isAnimationActive={false}>
            {data.map((d) => (
              <Cell key={d.stage} fill={d.color} />
            ))}
          </Bar>
        </BarChart>
      </ResponsiveContainer>
    </figure>
  );
}
