import { expect, test } from "@playwright/test";
import { ACME, forgePermissions, screenshot, signIn, tokenOf, unique, watchConsole } from "./helpers";

test("a tenant admin creates a dataset, ingests through the API and sees the records", async ({ page, request }) => {
  const errors = watchConsole(page);
  await signIn(page, ACME, "admin");
  await expect(page).toHaveURL(/\/datasets$/);
  await expect(page.getByRole("link", { name: "orders" })).toBeVisible();
  await screenshot(page, "datasets");

  const name = unique("e2e");
  const form = page.getByRole("form", { name: "Create a dataset" });
  await form.getByLabel("Name", { exact: true }).fill(name);
  await form.getByLabel("Column 1 name").fill("region");
  await form.getByRole("button", { name: "Add column" }).click();
  await form.getByLabel("Column 2 name").fill("amount");
  await form.getByLabel("Column 2 type").selectOption("decimal");
  await form.getByRole("button", { name: "Add column" }).click();
  await form.getByLabel("Column 3 name").fill("note");
  await form.locator(".column-draft").nth(2).getByLabel("searchable text").check();
  await form.getByRole("button", { name: "Create dataset" }).click();
  await expect(page.getByRole("heading", { name, level: 1 })).toBeVisible();
  await expect(page.getByTestId("record-count")).toHaveText("0");
  await expect(page.getByText("No records yet.")).toBeVisible();

  // Records come in through the API, as a customer's pipeline would send them.
  const token = await tokenOf(request, ACME, "admin");
  const records = Array.from({ length: 30 }, (_, i) => ({
    key: `r-${String(i).padStart(3, "0")}`,
    data: { region: i % 2 ? "EU" : "US", amount: 10 + i + 0.25, note: `parcel ${i} packed for shipping` },
  }));
  const ingest = await request.post(`/v1/datasets/${name}/records`, {
    headers: { authorization: `Bearer ${token}` },
    data: records,
  });
  expect(ingest.status(), await ingest.text()).toBe(200);

  await page.reload();
  await expect(page.getByTestId("record-count")).toHaveText("30");
  const rows = page.locator("table.records-table tbody tr");
  await expect(rows).toHaveCount(25);
  await expect(rows.first().locator("td").first()).toHaveText("r-000");
  await expect(rows.first()).toContainText("10.25");
  await screenshot(page, "dataset");
  await page.getByRole("button", { name: "Next" }).click();
  await expect(rows).toHaveCount(5);
  await expect(rows.last().locator("td").first()).toHaveText("r-029");

  await page.getByLabel("Record key").fill("r-007");
  await page.getByRole("button", { name: "Open" }).click();
  await expect(page.getByRole("heading", { name: "Record r-007" })).toBeVisible();
  await expect(page.getByTestId("record-version")).toHaveText("1");
  await expect(page.getByRole("row", { name: /amount/ })).toContainText("17.25");

  // The record changes: its page shows the new version, and the old one on request.
  const update = await request.post(`/v1/datasets/${name}/records`, {
    headers: { authorization: `Bearer ${token}` },
    data: [{ key: "r-007", data: { region: "EU", amount: 99.5, note: "parcel 7 repacked" } }],
  });
  expect(update.status()).toBe(200);
  await page.reload();
  await expect(page.getByTestId("record-version")).toHaveText("2");
  await expect(page.getByRole("row", { name: /amount/ })).toContainText("99.5");
  const versions = page.locator("table.versions-table tbody tr");
  await expect(versions).toHaveCount(2);
  await expect(versions.first()).toContainText("current");
  await screenshot(page, "record");
  await page.getByRole("link", { name: "Show version 1" }).click();
  await expect(page.getByTestId("version-changed")).toContainText("now at version 2");
  await expect(page.getByTestId("record-version")).toHaveText("1");
  await expect(page.getByRole("row", { name: /amount/ })).toContainText("17.25");
  expect(errors).toEqual([]);
});

test("a grouped query's chart and table agree with POST /v1/query", async ({ page, request, context }) => {
  await context.grantPermissions(["clipboard-read", "clipboard-write"]);
  const errors = watchConsole(page);
  await signIn(page, ACME, "admin");
  await page.getByRole("link", { name: "Query" }).click();
  const form = page.getByRole("form", { name: "Query builder" });
  await form.getByLabel("Dataset").selectOption("orders");
  await form.getByLabel("region").check();
  await form.getByLabel("Aggregate 1 function").selectOption("sum");
  await form.getByLabel("Aggregate 1 column").selectOption("amount");
  await form.getByRole("button", { name: "Add aggregate" }).click();
  await form.getByLabel("Aggregate 2 function").selectOption("count");
  const json = await page.getByTestId("query-json").textContent();
  const query = JSON.parse(json ?? "null");
  expect(query).toMatchObject({ dataset: "orders", group_by: ["region"], aggregates: [{ fn: "sum", column: "amount" }, { fn: "count" }] });
  // The JSON is copyable as shown.
  await form.getByRole("button", { name: "Copy JSON" }).click();
  await expect(form.getByRole("button", { name: "Copied" })).toBeVisible();
  expect(JSON.parse(await page.evaluate(() => navigator.clipboard.readText()))).toEqual(query);
  await form.getByRole("button", { name: "Run query" }).click();

  const token = await tokenOf(request, ACME, "admin");
  const api = await request.post("/v1/query", { headers: { authorization: `Bearer ${token}` }, data: query });
  expect(api.status()).toBe(200);
  const expected = (await api.json()) as { columns: { name: string }[]; rows: unknown[][] };
  expect(expected.rows.length).toBeGreaterThan(1);

  const result = page.getByRole("region", { name: "Result" });
  const table = result.locator("table.result-table");
  await expect(table.locator("tbody tr")).toHaveCount(expected.rows.length);
  const shown = await table.locator("tbody tr").evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
  expect(shown).toEqual(expected.rows.map((r) => r.map((v) => String(v))));
  // The chart: one bar per group and series, its axis labelled with the same groups.
  const chart = result.locator("figure.chart");
  await expect(chart.locator(".recharts-bar-rectangle")).toHaveCount(expected.rows.length * 2);
  const ticks = await chart.locator(".recharts-xAxis-tick-labels .recharts-cartesian-axis-tick-value").allTextContents();
  expect(ticks).toEqual(expected.rows.map((r) => String(r[0])));
  await screenshot(page, "query");
  expect(errors).toEqual([]);
});

test("asks a numbers question and a content question, and a citation opens the cited version", async ({ page }) => {
  const errors = watchConsole(page);
  await signIn(page, ACME, "member");
  await page.getByRole("link", { name: "Ask" }).click();
  const form = page.getByRole("form", { name: "Ask a question" });

  await form.getByLabel("Question").fill("What is the total amount by region in orders?");
  await form.getByRole("button", { name: "Ask" }).click();
  const answer = page.getByTestId("answer");
  await expect(answer).toHaveAttribute("data-kind", "figures");
  await expect(answer).toContainText("EU");
  const section = page.getByRole("region", { name: "Answer" });
  await section.getByText("The executed query").click();
  await expect(section.getByTestId("executed-query")).toContainText('"group_by"');
  // Every figure in the answer is in the result table.
  const figures = (await answer.textContent())!.match(/\d+(\.\d+)?/g) ?? [];
  const cells = (await section.locator("table.result-table td").allTextContents()).join(" ");
  for (const f of figures) expect(cells).toContain(f);
  await screenshot(page, "ask-figures");

  await form.getByLabel("Question").fill("Which orders arrived dented?");
  await form.getByRole("button", { name: "Ask" }).click();
  await expect(answer).toHaveAttribute("data-kind", "content");
  // The demo orders' notes say which parcels arrived dented.
  const citation = section.locator("a.citation", { hasText: "orders/" }).first();
  await expect(citation).toBeVisible();
  const label = (await citation.textContent())!;
  const [, key, version] = label.match(/orders\/(\S+) v(\d+)/)!;
  await screenshot(page, "ask-content");
  await citation.click();
  await expect(page.getByRole("heading", { name: `Record ${key}` })).toBeVisible();
  await expect(page.getByTestId("version-match")).toContainText(`version ${version}`);
  await expect(page.getByTestId("record-version")).toHaveText(version);
  await expect(page.locator(".record-value").filter({ hasText: "dented" })).toBeVisible();
  expect(errors).toEqual([]);
});

test("a viewer has no delete control, and a forced delete shows the API's 403", async ({ page }) => {
  const errors = watchConsole(page, [403]);
  await signIn(page, ACME, "viewer");
  await expect(page.getByRole("link", { name: "orders" })).toBeVisible();
  await expect(page.getByRole("form", { name: "Create a dataset" })).toHaveCount(0);
  await expect(page.getByRole("link", { name: "API keys" })).toHaveCount(0);
  // A page the role may not use, opened by its address, says so.
  await page.goto("/api-keys");
  await expect(page.getByRole("alert")).toContainText("manage_api_keys");
  await expect(page.getByRole("form", { name: "Create an API key" })).toHaveCount(0);
  await page.goto("/datasets/orders");
  await expect(page.getByTestId("record-count")).toHaveText(/^\d+$/);
  await expect(page.getByRole("button", { name: "Delete dataset" })).toHaveCount(0);

  // The attacker's move: the page is made to offer the control; the API still refuses.
  await forgePermissions(page, ["manage_datasets"]);
  await page.reload();
  await page.getByRole("button", { name: "Delete dataset" }).click();
  await page.getByRole("button", { name: "Delete forever" }).click();
  const problem = page.getByRole("alert");
  await expect(problem).toContainText("Not allowed");
  await expect(problem).toHaveAttribute("data-code", "insufficient_permission");
  await expect(problem.locator(".request-id")).toHaveText(/^[0-9a-f-]{36}$/);
  await screenshot(page, "viewer-403");
  // Nothing was deleted.
  await page.goto("/datasets/orders");
  await expect(page.getByTestId("record-count")).toHaveText(/^[1-9]\d*$/);
  expect(errors).toEqual([]);
});

test("the forms work from the keyboard alone", async ({ page }) => {
  const errors = watchConsole(page);
  await page.goto("/");
  // Sign in: Tab to Acme's admin button, Enter.
  const button = page
    .locator("section.card", { has: page.getByRole("heading", { name: ACME }) })
    .getByRole("button", { name: "Sign in as admin" });
  for (let i = 0; i < 20 && !(await button.evaluate((b) => b === document.activeElement)); i++) {
    await page.keyboard.press("Tab");
  }
  await expect(button).toBeFocused();
  await page.keyboard.press("Enter");
  await expect(page).toHaveURL(/\/datasets$/);
  // Open a dataset and a record by key: Tab into the field, type, Enter submits.
  await page.getByRole("link", { name: "orders" }).focus();
  await page.keyboard.press("Enter");
  await page.getByLabel("Record key").focus();
  await page.keyboard.type("o-1000");
  await page.keyboard.press("Enter");
  await expect(page.getByRole("heading", { name: "Record o-1000" })).toBeVisible();
  // Ask: type the question, Tab to the button, Enter.
  await page.getByRole("link", { name: "Ask" }).focus();
  await page.keyboard.press("Enter");
  await page.getByRole("textbox", { name: "Question" }).focus();
  await page.keyboard.type("What is the total amount by region in orders?");
  await page.keyboard.press("Tab");
  await expect(page.getByRole("button", { name: "Ask" })).toBeFocused();
  await page.keyboard.press("Enter");
  await expect(page.getByTestId("answer")).toHaveAttribute("data-kind", "figures");
  expect(errors).toEqual([]);
});
