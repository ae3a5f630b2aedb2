// The catalog's page, clicked through as a user would: opens the run form
// of a workflow with inputs, starts it without a required input (the
// daemon's refusal is shown and no run starts), then fills every field and
// starts it; the page moves to the new run.
//
// usage: node workflows.mjs BASE_URL ADMIN_TOKEN ARTIFACT_DIR
// Prints one JSON line of what it saw; exits non-zero on the first failure.
import { drive, T } from "./browser.mjs";
import { join } from "node:path";

await drive("workflows.mjs", ["BASE_URL", "ADMIN_TOKEN", "ARTIFACT_DIR"], async (page, args, seen, problems) => {
  const { BASE_URL: base, ADMIN_TOKEN: token, ARTIFACT_DIR: artifacts } = args;
  await page.goto(`${base}/ui/`);
  await page.locator("#token").fill(token);
  await page.locator("form.login button").click();
  await page.locator('nav a[data-view="workflows"]').click();
  const row = page.locator('tr[data-workflow="release"]');
  await row.waitFor(T);
  seen.row_text = await row.textContent();
  await row.locator('[data-action="open-run-form"]').click();
  const form = page.locator('form.run-form[data-workflow="release"]');
  await form.waitFor(T);
  seen.fields = await form.locator("[data-input]").count();
  // Without the required `version`: the daemon refuses, naming it.
  await form.locator('[data-action="start"]').click();
  const refusal = page.locator("#toast", { hasText: "version" });
  await refusal.waitFor(T);
  seen.refusal = await refusal.first().textContent();
  // The refused request is logged by the browser as an error: it was meant.
  problems.splice(0, problems.length, ...problems.filter((p) => !p.includes("422")));
  await form.locator("#input-version").fill("2.0; $(touch /tmp/orch-pwned)");
  await form.locator("#input-count").fill("3");
  await form.locator("#input-fast").check();
  await form.locator("#input-target").selectOption({ label: "mac" });
  await form.locator("#input-files").fill("a.txt\nb.txt");
  await form.locator('[data-action="start"]').click();
  await page.waitForURL(/#\/runs\/[^/]+$/, T);
  seen.run_id = decodeURIComponent(page.url().split("#/runs/")[1]);
  await page.screenshot({ path: join(artifacts, "workflows-started.png"), fullPage: true });
});
