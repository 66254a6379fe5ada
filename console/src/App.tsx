import { useEffect, useState, type ReactNode } from "react";
import { BrowserRouter, NavLink, Navigate, Route, Routes, useLocation, useNavigate } from "react-router-dom";
import { ApiError, api, type Permission } from "./api";
import { useAuth } from "./auth";
import { ErrorBoundary } from "./ui";
import { SignIn } from "./pages/SignIn";
import { Datasets, DatasetDetail } from "./pages/Datasets";
import { RecordView } from "./pages/Records";
import { QueryBuilder } from "./pages/Query";
import { Ask } from "./pages/Ask";
import { Usage } from "./pages/Usage";
import { ApiKeys } from "./pages/ApiKeys";
import { Members } from "./pages/Members";
import { Audit } from "./pages/Audit";
import { SupportTenants, SupportTenant, SupportSessions } from "./pages/Support";
import { SupportAccess } from "./pages/SupportAccess";

export function App() {
  return (
    <BrowserRouter>
      <Shell />
    </BrowserRouter>
  );
}

function Shell() {
  const { identity } = useAuth();
  const location = useLocation();
  if (!identity) return <SignIn />;
  const tenantView = identity.kind !== "staff";
  return (
    <div className="shell">
      {identity.kind === "impersonating" && <ImpersonationBanner />}
      <Header />
      <div className="body">
        <nav className="sidebar" aria-label="Main">{tenantView ? <TenantNav /> : <StaffNav />}</nav>
        <main className="content">
          <ErrorBoundary key={location.pathname}>
          {tenantView ? (
            <Routes>
              <Route path="/" element={<Navigate to="/datasets" replace />} />
              <Route path="/datasets" element={<Needs p="read_data"><Datasets /></Needs>} />
              <Route path="/datasets/:dataset" element={<Needs p="read_data"><DatasetDetail /></Needs>} />
              <Route path="/datasets/:dataset/records/:key" element={<Needs p="read_data"><RecordView /></Needs>} />
              <Route path="/query" element={<Needs p="query"><QueryBuilder /></Needs>} />
              <Route path="/ask" element={<Needs p="query"><Ask /></Needs>} />
              <Route path="/usage" element={<Needs p="read_billing"><Usage /></Needs>} />
              <Route path="/api-keys" element={<Needs p="manage_api_keys"><ApiKeys /></Needs>} />
              <Route path="/members" element={<Members />} />
              <Route path="/audit" element={<Needs p="read_audit"><Audit /></Needs>} />
              <Route path="/support-access" element={<Needs p="oversee_support"><SupportAccess /></Needs>} />
              <Route path="*" element={<NotFound home="/datasets" label="Go to datasets" />} />
            </Routes>
          ) : (
            <Routes>
              <Route path="/" element={<Navigate to="/support" replace />} />
              <Route path="/support" element={<SupportTenants />} />
              <Route path="/support/tenants/:tenant" element={<SupportTenant />} />
              <Route path="/support/sessions" element={<SupportSessions />} />
              <Route path="*" element={<NotFound home="/support" label="Go to tenants" />} />
            </Routes>
          )}
          </ErrorBoundary>
        </main>
      </div>
    </div>
  );
}

/** A page the caller's role may not use says so, instead of failing call by call. */
function Needs({ p, children }: { p: Permission; children: ReactNode }) {
  const { can } = useAuth();
  if (can(p)) return <>{children}</>;
  return (
    <div role="alert" className="problem forbidden" data-code="insufficient_permission">
      <strong>Not allowed:</strong> this page needs the <code>{p}</code> permission, which your role does not grant.
    </div>
  );
}

function NotFound({ home, label }: { home: string; label: string }) {
  return (
    <>
      <h1>Not found</h1>
      <p>
        There is no page here. <NavLink to={home}>{label}</NavLink>.
      </p>
    </>
  );
}

function Header() {
  const { identity, devLabel, signOut, config } = useAuth();
  const navigate = useNavigate();
  const who =
    identity?.kind === "staff"
      ? "Support"
      : identity
        ? `${identity.me.tenant.name} · ${(identity.me.principal.roles ?? []).join(", ") || identity.me.principal.kind}`
        : "";
  return (
    <header className="topbar">
      <span className="brand">Tenantry</span>
      <span className="who" data-testid="who">{who}</span>
      {config.auth === "local" && devLabel && (
        <span className="dev-label" title="A dev token from the local runner: never valid outside this machine">
          dev sign-in: {devLabel}
        </span>
      )}
      <button
        className="secondary"
        onClick={() => {
          void signOut().then(() => navigate("/"));
        }}
      >
        Sign out
      </button>
    </header>
  );
}

function TenantNav() {
  const { can } = useAuth();
  const links: [string, string, boolean][] = [
    ["/datasets", "Datasets", can("read_data")],
    ["/query", "Query", can("query")],
    ["/ask", "Ask", can("query")],
    ["/usage", "Usage & billing", can("read_billing")],
    ["/api-keys", "API keys", can("manage_api_keys")],
    ["/members", "Members & roles", true],
    ["/audit", "Audit log", can("read_audit")],
    ["/support-access", "Support access", can("oversee_support")],
  ];
  return (
    <ul>
      {links
        .filter(([, , shown]) => shown)
        .map(([to, label]) => (
          <li key={to}>
            <NavLink to={to}>{label}</NavLink>
          </li>
        ))}
    </ul>
  );
}

function StaffNav() {
  return (
    <ul>
      <li>
        <NavLink to="/support" end>
          Tenants
        </NavLink>
      </li>
      <li>
        <NavLink to="/support/sessions">Impersonation sessions</NavLink>
      </li>
    </ul>
  );
}

function remaining(expiresAt: string, now: number): string {
  const ms = Math.max(0, Date.parse(expiresAt) - now);
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** On every page while impersonating: the tenant, the mode and the time left. */
function ImpersonationBanner() {
  const { identity, stopImpersonation } = useAuth();
  const navigate = useNavigate();
  const [now, setNow] = useState(Date.now());
  const [ending, setEnding] = useState(false);
  const [endError, setEndError] = useState<unknown>(null);
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, []);
  if (identity?.kind !== "impersonating") return null;
  const s = identity.session;
  const expired = Date.parse(s.expiresAt) <= now;
  const end = async () => {
    setEnding(true);
    try {
      await api(`/admin/v1/impersonations/${s.id}/end`, { method: "POST", asStaff: true });
    } catch (e) {
      // Already over (ended by the tenant, expired, support access turned off): nothing left to
      // end. Anything else (the API unreachable): the session may still be live, so stay and say.
      const over = e instanceof ApiError && [401, 403, 404, 409].includes(e.problem.status);
      if (!over) {
        setEnding(false);
        setEndError(e);
        return;
      }
    }
    stopImpersonation();
    navigate(`/support/tenants/${s.tenantId}`);
  };
  return (
    <div className={`impersonation-banner${expired ? " expired" : ""}`} role="status" data-testid="impersonation-banner">
      <span>
        Support session in <strong>{s.tenantName}</strong> · {s.mode === "read_only" ? "read-only" : "read-write"} ·{" "}
        {expired ? (
          <strong>expired</strong>
        ) : (
          <>
            ends in <strong data-testid="countdown">{remaining(s.expiresAt, now)}</strong>
          </>
        )}
      </span>
      <button onClick={() => void end()} disabled={ending}>
        {expired ? "Back to support" : "End session"}
      </button>
      {endError !== null && (
        <span className="end-error">
          Could not end the session: {endError instanceof ApiError ? endError.problem.detail : String(endError)}
        </span>
      )}
    </div>
  );
}
