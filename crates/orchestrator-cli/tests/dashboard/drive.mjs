// Drives the daemon's dashboard in Debian's Chromium, as a user would:
// opens a login link, finds the run, reads its graph, follows a stage's
// log, approves the waiting stage by clicking, and sees the run go on to
// its end through live updates alone (the page is never reloaded).
//
// usage: node drive.mjs LINK RUN_ID ARTIFACT_DIR RELEASE_FILE
// (the `serve` stage's command waits for RELEASE_FILE, which this creates
// once the page shows the command's first line)
// Prints one JSON line of what it saw; exits non-zero on the first failure.
import { drive, T } from "./browser.mjs";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

await drive("drive.mjs", ["LINK", "RUN_ID", "ARTIFACT_DIR", "RELEASE_FILE"], async (page, args, seen) => {
  const { LINK: link, RUN_ID: runId, ARTIFACT_DIR: artifacts, RELEASE_FILE: release } = args;
  await page.goto(link);
  // The ticket is traded for a session and leaves the address bar.
  const row = page.locator(`#runs tr[data-run="${runId}"]`);
  await row.waitFor(T);
  seen.ticket_left_url = !page.url().includes("ticket=");
  seen.live = await page.locator("#live.on").count();
  await row.click();

  // The graph: every stage a node, the waiting one coloured so.
  const review = page.locator('svg.dag g.node[data-stage="review"]');
  await review.waitFor(T);
  await page.locator('svg.dag g.node[data-stage="review"][data-state="awaiting_approval"]').waitFor(T);
  seen.nodes = await page.locator("svg.dag g.node").count();
  seen.edges = await page.locator("svg.dag path.edge").count();
  seen.critical_nodes = await page.locator("svg.dag g.node.critical").evaluateAll((els) => els.map((e) => e.dataset.stage));
  seen.critical_edges = await page.locator("svg.dag path.edge.critical").count();
  seen.states_before = await page.locator("svg.dag g.node").evaluateAll((els) =>
    Object.fromEntries(els.map((e) => [e.dataset.stage, e.dataset.state])));

  // A running command's log, followed as it writes.
  await page.locator('svg.dag g.node[data-stage="serve"]').click();
  await page.locator('#stage[data-stage="serve"]').waitFor(T);
  await page.locator("pre#log", { hasText: "waiting for release" }).waitFor(T);
  seen.serve_log_before = (await page.locator("pre#log").textContent()).trim();
  seen.serve_state_before = await page.locator('svg.dag g.node[data-stage="serve"]').getAttribute("data-state");
  writeFileSync(release, "go\n");
  await page.locator("pre#log", { hasText: "released" }).waitFor(T);
  seen.serve_log_after = (await page.locator("pre#log").textContent()).trim();

  // A stage's steps, checkpoint and log.
  await page.locator('svg.dag g.node[data-stage="build"]').click();
  await page.locator('#stage[data-stage="build"]').waitFor(T);
  await page.locator("pre#log", { hasText: "compiled 3 units" }).waitFor(T);
  seen.build_log = (await page.locator("pre#log").textContent()).trim();
  seen.build_checkpoints = await page.locator("#stage code[title]").count();
  seen.build_outputs = (await page.locator('#stage table.outputs tr[data-output="version"]').innerText()).replace(/\s+/g, " ").trim();

  // Approve by clicking.
  await review.click();
  await page.locator('#stage[data-stage="review"]').waitFor(T);
  await page.screenshot({ path: join(artifacts, "dashboard-awaiting-approval.png"), fullPage: true });
  await page.locator('#stage button[data-action="approve"]').click();

  // Live updates alone carry the run to its end on the page.
  await page.locator('svg.dag g.node[data-stage="ship"][data-state="succeeded"]').waitFor(T);
  await page.locator('.kv [data-state="succeeded"]').waitFor(T);
  seen.states_after = await page.locator("svg.dag g.node").evaluateAll((els) =>
    Object.fromEntries(els.map((e) => [e.dataset.stage, e.dataset.state])));
  await page.screenshot({ path: join(artifacts, "dashboard-run-succeeded.png"), fullPage: true });

  // The other views.
  await page.locator('nav a[data-view="agents"]').click();
  await page.locator("#agents tbody tr").first().waitFor(T);
  seen.agents = await page.locator("#agents tbody tr").count();
  await page.screenshot({ path: join(artifacts, "dashboard-agents.png"), fullPage: true });
  await page.locator('nav a[data-view="inbox"]').click();
  await page.locator("main h1", { hasText: "Inbox" }).waitFor(T);
  seen.inbox_empty = await page.locator("main", { hasText: "Nothing waits for you." }).count();
});
