// The API client: every call goes through `api`, which adds the caller's credentials (and the
// support session's header while impersonating) and turns problem+json errors into ApiError.

export interface Problem {
  status: number;
  code: string;
  title: string;
  detail: string;
  request_id?: string;
  errors?: { path?: string; message: string; index?: number }[];
}

export class ApiError extends Error {
  readonly problem: Problem;
  constructor(problem: Problem) {
    super(problem.detail || problem.title);
    this.problem = problem;
  }
}

/** The support session a staff member is acting under, sent as `Tenantry-Impersonation`. */
export interface Impersonation {
  id: string;
  tenantId: string;
  tenantName: string;
  mode: "read_only" | "read_write";
  expiresAt: string;
}

type TokenSource = () => Promise<string>;

let apiBase = "";
let tokenSource: TokenSource | null = null;
let impersonation: Impersonation | null = null;

export function configureApi(base: string, source: TokenSource | null) {
  apiBase = base.replace(/\/$/, "");
  tokenSource = source;
}

export function setImpersonation(session: Impersonation | null) {
  impersonation = session;
}

export interface CallOptions {
  method?: string;
  body?: unknown;
  /** Raw body (NDJSON, say), sent with `contentType`. */
  raw?: string;
  contentType?: string;
  /** Sent without the support session even while one is active (the staff's own routes). */
  asStaff?: boolean;
  signal?: AbortSignal;
}

export async function api<T>(path: string, opts: CallOptions = {}): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (tokenSource) headers.authorization = `Bearer ${await tokenSource()}`;
  if (impersonation && !opts.asStaff && path.startsWith("/v1/")) {
    headers["tenantry-impersonation"] = impersonation.id;
  }
  let body: string | undefined;
  if (opts.raw !== undefined) {
    body = opts.raw;
    headers["content-type"] = opts.contentType ?? "application/x-ndjson";
  } else if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers["content-type"] = "application/json";
  }
  let resp: Response;
  try {
    resp = await fetch(apiBase + path, {
      method: opts.method ?? (body === undefined ? "GET" : "POST"),
      headers,
      body,
      signal: opts.signal,
    });
  } catch (e) {
    if (e instanceof DOMException && e.name === "AbortError") throw e;
    throw new ApiError({
      status: 0,
      code: "network_error",
      title: "The API could not be reached",
      detail: `No response from ${apiBase || window.location.origin} (${String(e)}).`,
    });
  }
  if (resp.status === 204) return undefined as T;
  const text = await resp.text();
  let parsed: unknown = undefined;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!resp.ok) {
    const p = (parsed ?? {}) as Partial<Problem>;
    throw new ApiError({
      status: resp.status,
      code: p.code ?? `http_${resp.status}`,
      title: p.title ?? resp.statusText,
      detail: p.detail ?? (text.slice(0, 300) || resp.statusText),
      request_id: p.request_id ?? resp.headers.get("x-request-id") ?? undefined,
      errors: p.errors,
    });
  }
  return parsed as T;
}

// The API's shapes, as the console uses them (openapi.json has them whole).

export type Permission =
  | "read_data"
  | "query"
  | "write_data"
  | "manage_datasets"
  | "manage_api_keys"
  | "manage_members"
  | "read_billing"
  | "read_audit"
  | "export_data"
  | "oversee_support"
  | "manage_support_access";

export interface Me {
  tenant: { id: string; name: string; slug: string; plan: string; status: string; created_at: string };
  principal: { kind: string; id: string; roles?: string[]; scopes?: string[]; permissions: Permission[] };
}

export type ColumnType = "string" | "integer" | "number" | "decimal" | "boolean" | "timestamp";

export interface Column {
  name: string;
  type: ColumnType;
  required?: boolean;
  scale?: number;
}

export interface Dataset {
  id: string;
  name: string;
  columns: Column[];
  text_columns: string[];
  time_column: string | null;
  rollups?: { dimensions: string[]; bucket: string }[];
  created_at: string;
  record_count?: number;
}

export interface StoredRecord {
  key: string;
  version: number;
  data: Record<string, unknown>;
  created_at: string;
  updated_at: string;
}

export interface QueryResult {
  columns: { name: string; type: string }[];
  rows: unknown[][];
  row_count: number;
  truncated: boolean;
}

export interface Citation {
  label: string;
  dataset: string;
  record_key: string;
  record_version: number;
  snippet: string;
  score?: number;
  relevance?: number;
}

export interface AskAnswer {
  answer: string;
  kind: "figures" | "content" | "both" | "none";
  citations: Citation[];
  model: string;
  planner: string;
  queries?: { query: unknown; result: QueryResult }[];
  dropped_citations: number;
  dropped_figures: number;
  rejected_plans: number;
  /** Why the answer is what it is (nothing relevant, a question the data cannot answer). */
  reason?: string;
  /** What could not be worked on just now (a model was unavailable). */
  notice?: string;
}

export interface AuditEvent {
  seq: number;
  occurred_at: string;
  actor: string;
  impersonation_id: string | null;
  action: string;
  target: string | null;
  details: Record<string, unknown>;
}

export interface ImpersonationSession {
  id: string;
  tenant_id: string;
  staff_id: string;
  reason: string;
  ticket: string | null;
  mode: "read_only" | "read_write";
  allow_export: boolean;
  state: "awaiting_approval" | "active" | "ended" | "expired";
  needs_staff_approval: boolean;
  needs_tenant_approval: boolean;
  staff_approved_by: string | null;
  tenant_approved_by: string | null;
  started_at: string;
  expires_at: string;
  ended_at: string | null;
  ended_by: string | null;
  requests?: number;
}

/** Whether a session may still be used or approved (it has neither ended nor expired). */
export function sessionOpen(s: ImpersonationSession): boolean {
  return s.state === "active" || s.state === "awaiting_approval";
}

export interface AdminTenant {
  id: string;
  name: string;
  slug: string;
  auth0_org_id: string;
  plan: string;
  status: string;
  support_access: string;
  created_at: string;
  members: number;
  embedding_backlog: number;
  billing: {
    status: string;
    customer_id: string | null;
    customer_pending: boolean;
    customer_error: string | null;
    last_invoice_status: string | null;
  };
  deliveries: { failed: number; pending: number; late_units: number };
  last_reconciliation: { at: string; days_not_in_sync: number; drift: number; run_id: string } | null;
  lifecycle: { closed_at: string | null; delete_after: string | null; data_deleted_at: string | null };
  usage_this_period: { start: string; end: string; source: string; meters: Record<string, number> };
}
