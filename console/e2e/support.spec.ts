import { expect, test } from "@playwright/test";
import { ACME, forgePermissions, overflowsSideways, screenshot, signIn, watchConsole } from "./helpers";

test("staff impersonate read-only: banner and countdown on every page, a write refused, the session in the tenant's audit log", async ({ page }) => {
  // The refused write is the one failed load expected.
  const errors = watchConsole(page, [403]);
  await signIn(page, null, "support_admin");
  await expect(page).toHaveURL(/\/support$/);
  const row = page.getByRole("row", { name: new RegExp(ACME) });
  await expect(row).toBeVisible();
  await expect(row.locator(".badge")).toBeVisible();
  await screenshot(page, "support-tenants");
  await row.getByRole("link", { name: ACME }).click();
  await expect(page.getByRole("heading", { name: ACME, level: 1 })).toBeVisible();
  await screenshot(page, "support-tenant");

  const ticket = `SUP-${Date.now() % 100000}`;
  const form = page.getByRole("form", { name: "Start impersonation" });
  await form.getByLabel("Reason").fill("Customer reports wrong totals on the orders dashboard");
  await form.getByLabel("Ticket").fill(ticket);
  await form.getByLabel("Minutes (at most 60)").fill("5");
  await form.getByRole("button", { name: "Start session" }).click();

  const banner = page.getByTestId("impersonation-banner");
  await expect(banner).toContainText(ACME);
  await expect(banner).toContainText("read-only");
  const countdown = banner.getByTestId("countdown");
  await expect(countdown).toHaveText(/^[45]:\d\d$/);
  const first = await countdown.textContent();
  await expect(countdown).not.toHaveText(first!, { timeout: 5000 });
  await expect(page).toHaveURL(/\/datasets$/);
  await screenshot(page, "impersonating");

  // The banner stays on every page.
  await page.getByRole("link", { name: "orders" }).click();
  await expect(banner).toBeVisible();
  await page.getByRole("link", { name: "Query" }).click();
  await expect(banner).toBeVisible();
  // A read-only session offers no write control; made to offer one, the API refuses it.
  await page.goto("/datasets/orders");
  await expect(page.getByTestId("record-count")).toHaveText(/^\d+$/);
  await expect(page.getByRole("button", { name: "Delete dataset" })).toHaveCount(0);
  await forgePermissions(page, ["manage_datasets"]);
  await page.reload();
  await expect(banner).toBeVisible();
  await page.getByRole("button", { name: "Delete dataset" }).click();
  await page.getByRole("button", { name: "Delete forever" }).click();
  await expect(page.getByRole("alert")).toHaveAttribute("data-code", "not_allowed_under_impersonation");
  await page.unroute("**/v1/me");

  await banner.getByRole("button", { name: "End session" }).click();
  await expect(page).toHaveURL(/\/support\/tenants\//);
  await expect(banner).toHaveCount(0);
  await page.getByRole("link", { name: "Impersonation sessions" }).click();
  const session = page.getByRole("row", { name: new RegExp(ticket) });
  await expect(session).toContainText("ended");

  // The tenant sees the session in its audit log: started, each request (the refused write
  // too), ended.
  await page.getByRole("button", { name: "Sign out" }).click();
  await signIn(page, ACME, "admin");
  await page.getByRole("link", { name: "Audit log" }).click();
  await expect(page.getByTestId("chain-status")).toContainText("Chain intact");
  await expect(page.getByRole("row", { name: /impersonation\.started/ })).toHaveCount(1);
  await expect(page.getByRole("row", { name: /impersonation\.ended/ })).toHaveCount(1);
  // Only this session's entries: each request, the refused delete among them.
  await page.getByRole("row", { name: /impersonation\.request/ }).first().getByRole("button").click();
  await expect(page.getByText("Entries of support session")).toBeVisible();
  const entries = page.locator("table.audit-table tbody tr");
  await expect(entries.filter({ hasText: "impersonation.request" }).first()).toBeVisible();
  await expect(entries.filter({ hasNotText: "impersonation.request" })).toHaveCount(0);
  const refused = entries.filter({ hasText: "/v1/datasets/orders" }).filter({ hasText: '"method":"DELETE"' });
  await expect(refused).toHaveCount(1);
  await expect(refused).toContainText('"allowed":false');
  await screenshot(page, "audit");

  // The tenant's support page lists the session, who, why and its requests.
  await page.getByRole("link", { name: "Support access" }).click();
  const mine = page.getByRole("row", { name: new RegExp(ticket) });
  await expect(mine).toContainText("ended");
  await expect(mine).toContainText("auth0|dev-support_admin");
  await expect(mine.getByRole("link")).toHaveText(/^[1-9]\d*$/);
  await screenshot(page, "support-access");
  expect(errors).toEqual([]);
});

test("every tenant page loads without console errors; an API key is shown once and revoked", async ({ page }) => {
  const errors = watchConsole(page);
  await signIn(page, ACME, "owner");
  await page.getByRole("link", { name: "Usage & billing" }).click();
  await expect(page.getByRole("heading", { name: "Usage & billing" })).toBeVisible();
  await expect(page.getByRole("row", { name: /queries/ })).toBeVisible();
  await expect(page.locator("figure.chart .recharts-bar-rectangle").first()).toBeVisible();
  await screenshot(page, "usage");

  await page.getByRole("link", { name: "API keys" }).click();
  const name = `console-key-${Date.now()}`;
  const form = page.getByRole("form", { name: "Create an API key" });
  await form.getByLabel("Name").fill(name);
  await form.getByRole("checkbox", { name: /^ingest/ }).check();
  await form.getByRole("button", { name: "Create key" }).click();
  const shown = page.getByTestId("new-key");
  await expect(shown).toContainText("shown only once");
  const secret = (await shown.locator("pre").textContent())!.trim();
  expect(secret.length).toBeGreaterThan(20);
  await screenshot(page, "api-keys");
  await shown.getByRole("button", { name: "Done" }).click();
  await expect(page.getByText(secret)).toHaveCount(0);
  const row = page.getByRole("row", { name: new RegExp(name) });
  await expect(row).toContainText("read, ingest");
  await row.getByRole("button", { name: `Revoke ${name}` }).click();
  await expect(row).toContainText("revoked");

  await page.getByRole("link", { name: "Members & roles" }).click();
  await expect(page.getByTestId("my-roles")).toHaveText("owner");
  await screenshot(page, "members");
  await page.getByRole("link", { name: "Audit log" }).click();
  await expect(page.getByRole("row", { name: /api_key\.revoked/ }).first()).toBeVisible();

  // A phone's width: the layout folds and no page scrolls sideways (wide tables scroll in
  // their own box).
  await page.setViewportSize({ width: 390, height: 800 });
  for (const [link, ready] of [
    ["Datasets", page.getByRole("link", { name: "orders" })],
    ["Query", page.getByRole("button", { name: "Run query" })],
    ["Ask", page.getByRole("button", { name: "Ask" })],
    ["Usage & billing", page.getByRole("row", { name: /queries/ })],
    ["API keys", page.getByRole("button", { name: "Create key" })],
    ["Members & roles", page.getByTestId("my-roles")],
    ["Audit log", page.getByTestId("chain-status")],
    ["Support access", page.getByRole("form", { name: "Support access" })],
  ] as const) {
    await page.getByRole("link", { name: link }).click();
    await expect(ready).toBeVisible();
    expect(await overflowsSideways(page), link).toBe(false);
  }
  await page.getByRole("link", { name: "Datasets" }).click();
  await page.getByRole("link", { name: "orders" }).click();
  await expect(page.getByTestId("record-count")).toHaveText(/^\d+$/);
  expect(await overflowsSideways(page), "dataset").toBe(false);
  await screenshot(page, "dataset-narrow");
  expect(errors).toEqual([]);
});

test("the runner answers only requests that name this machine (a DNS-rebinding page gets nothing)", async ({ baseURL }) => {
  const { request } = await import("node:http");
  const url = new URL(baseURL!);
  const get = (path: string, host: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request({ hostname: url.hostname, port: url.port, path, headers: { host } }, (res) => {
        let body = "";
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on("error", reject);
      req.end();
    });
  for (const path of ["/local/sign-in", "/v1/me", "/admin/v1/tenants", "/"]) {
    const refused = await get(path, `evil.example:${url.port}`);
    expect(refused.status, path).toBe(403);
    expect(refused.body).not.toContain("eyJ");
  }
  const allowed = await get("/local/sign-in", `localhost:${url.port}`);
  expect(allowed.status).toBe(200);
  expect(allowed.body).toContain('"identities"');
});
