import { expect, type APIRequestContext, type Page } from "@playwright/test";
import { mkdirSync } from "node:fs";

import type { DevIdentity } from "../src/auth";

export const ACME = "Acme Analytics";

/** The runner's dev identities (GET /local/sign-in). */
export async function identities(request: APIRequestContext): Promise<DevIdentity[]> {
  const r = await request.get("/local/sign-in");
  expect(r.ok()).toBeTruthy();
  return ((await r.json()) as { identities: DevIdentity[] }).identities;
}

export async function tokenOf(request: APIRequestContext, tenant: string | null, role: string): Promise<string> {
  const all = await identities(request);
  const who = all.find((w) => (tenant ? w.tenant === tenant : w.kind === "staff") && w.role === role);
  if (!who) throw new Error(`no dev identity ${tenant} ${role}`);
  return who.token;
}

/**
 * Console errors and uncaught exceptions, collected for the no-console-errors assertion. A
 * refusal the test provokes is logged by the browser as a failed load: pass its status to allow
 * it (and nothing else).
 */
export function watchConsole(page: Page, allowedStatuses: number[] = []): string[] {
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const failed = m.text().match(/Failed to load resource: the server responded with a status of (\d{3})/);
    if (failed && allowedStatuses.includes(Number(failed[1]))) return;
    errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  return errors;
}

/** Whether the page is wider than the window (something cut off or scrolling sideways). */
export async function overflowsSideways(page: Page): Promise<boolean> {
  return page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
}

/** Signs in through the dev sign-in page: a tenant's person by role, or staff. */
export async function signIn(page: Page, tenant: string | null, role: string) {
  await page.goto("/");
  const section = page.locator("section.card", { has: page.getByRole("heading", { name: tenant ?? "Support staff" }) });
  await section.getByRole("button", { name: tenant ? `Sign in as ${role}` : `Sign in as staff (${role})` }).click();
  await expect(page.getByRole("button", { name: "Sign out" })).toBeVisible();
}

export async function screenshot(page: Page, name: string) {
  mkdirSync("test-results/screens", { recursive: true });
  await page.screenshot({ path: `test-results/screens/${name}.png`, fullPage: true });
}

/**
 * Makes the console believe the caller holds `extra` permissions (it rewrites GET /v1/me's
 * answer in the browser), so it shows controls the role may not use: what an attacker editing
 * the page could do. The API still decides.
 */
export async function forgePermissions(page: Page, extra: string[]) {
  await page.route("**/v1/me", async (route) => {
    const resp = await route.fetch();
    const body = await resp.json();
    body.principal.permissions = [...new Set([...body.principal.permissions, ...extra])];
    await route.fulfill({ response: resp, json: body });
  });
}

export function unique(prefix: string) {
  return `${prefix}_${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
}
