// The merger's dashboard in a real browser: Debian's headless Chromium, driven by
// playwright-core. Run by tests/tests/e2e/dashboard.rs, which starts the merger, seeds it and
// passes what the page must show; this script only drives the page and compares.
//
//   TALLY_URL         the merger, http://127.0.0.1:PORT
//   TALLY_CHROMIUM    the browser binary (/usr/bin/chromium-headless-shell)
//   TALLY_EXPECT      JSON: readToken, stale, figures, countOrder, search, history, viewers,
//                     milestones, regions, live
//   TALLY_SCREENSHOT  where the PNG goes
//
// Each check prints one line; the first failure throws, and the exit code is 1.

import { chromium } from "playwright-core";

const url = need("TALLY_URL");
const expect = JSON.parse(need("TALLY_EXPECT"));
const started = Date.now();

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}
function log(line) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${line}`);
}
function check(ok, what, detail = "") {
  if (!ok) throw new Error(`FAILED: ${what}${detail ? `\n  ${detail}` : ""}`);
  log(`ok: ${what}`);
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const browser = await chromium.launch({ executablePath: need("TALLY_CHROMIUM"), headless: true });
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 820 } });
  page.setDefaultTimeout(8000);
  // Everything the page needs is the merger's: any other request is a failure.
  page.on("request", (r) => {
    if (!r.url().startsWith(url) && !r.url().startsWith("data:")) problems.push(`request to ${r.url()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // Chromium logs each 401 answer as a failed resource load: those are expected here.
    if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()}`);
  });

  const rowIds = (ns) => page.$$eval(`#${ns} tbody tr`, (trs) => trs.map((tr) => tr.dataset.id));
  const cellText = (ns, id, cls) =>
    page.$eval(`#${ns} tbody tr[data-id="${id}"] td.${cls}`, (td) => td.textContent);

  // 1. The read token: the API answers 401, the page asks for it.
  await page.goto(`${url}/?stale=${expect.stale}`);
  await page.waitForSelector("#token-form:not([hidden])");
  check((await page.textContent("#status-text")).includes("Read token required"),
    "without the token the page asks for it");
  await page.fill("#token-input", expect.readToken);
  await page.press("#token-input", "Enter");
  await page.waitForSelector("#counters tbody tr");
  check(await page.isHidden("#token-form"), "with the token pasted the lists load");
  check(await page.evaluate(() => sessionStorage.getItem("tally-read-token")) === expect.readToken,
    "the token is kept in sessionStorage");

  // 2. Figures, exactly as seeded: thousands separators, beyond 2^53 digit for digit.
  for (const [ns, id, text] of expect.figures) {
    const shown = await cellText(ns, id, "count");
    check(shown === text, `${ns}/${id} shows ${text}`, `shown: ${shown}`);
  }

  // 3. Sort by count with the keyboard: largest first, then smallest first.
  await page.focus("#counters th button[data-key=count]");
  await page.keyboard.press("Enter");
  const sorted = await rowIds("counters");
  check(same(sorted, expect.countOrder), "sorting by count puts the largest first",
    `order: ${sorted.join(", ")}`);
  check(await page.getAttribute("#counters th[data-key=count]", "aria-sort") === "descending",
    "the count column says aria-sort=descending");
  await page.keyboard.press("Space");
  const ascending = await rowIds("counters");
  check(same(ascending, [...expect.countOrder].reverse()), "sorting again reverses it",
    `order: ${ascending.join(", ")}`);
  await page.keyboard.press("Enter");
  await page.click("#gauges th button[data-key=count]");

  // 4. Search filters both tables, keeping the sort.
  await page.fill("#search", expect.search.query);
  const found = { counters: await rowIds("counters"), gauges: await rowIds("gauges") };
  check(same(found.counters, expect.search.counters) && same(found.gauges, expect.search.gauges),
    `searching "${expect.search.query}" keeps only the matching ids`, JSON.stringify(found));
  await page.fill("#search", "");
  check((await rowIds("counters")).length === expect.countOrder.length, "clearing the search shows every counter");

  // 5. A counter's history: the chart has one vertex per point the history API returns.
  const h = expect.history;
  await page.click(`#${h.namespace} tbody tr[data-id="${h.id}"] a`);
  await page.waitForSelector("#detail svg[data-points]");
  const api = await page.evaluate(async ([ns, id, token]) => {
    const r = await fetch(`/v1/${ns}/${encodeURIComponent(id)}/history?limit=10000`,
      { headers: { Authorization: `Bearer ${token}` } });
    return (await r.json()).points.length;
  }, [h.namespace, h.id, expect.readToken]);
  const drawn = await page.$eval("#detail svg[data-points]", (s) => ({
    points: Number(s.dataset.points),
    vertices: s.querySelector("polyline").getAttribute("points").trim().split(/\s+/).length,
    dots: s.querySelectorAll("circle").length,
  }));
  check(api === h.points, `the history API has the ${h.points} seeded points of ${h.id}`, `api: ${api}`);
  check(drawn.points === api && drawn.vertices === api && drawn.dots === api,
    `the chart draws ${api} points`, JSON.stringify(drawn));
  check(await page.textContent("#detail-title") === h.id && (await page.textContent(".detail-figure")) === h.figure,
    `the detail shows ${h.id} at ${h.figure}`);
  check(await page.getAttribute(`#${h.namespace} tr[data-id="${h.id}"] a`, "aria-current") === "true",
    "the selected row is marked aria-current");

  // 5b. The same id's viewers now and unique visitors, and its milestones: the won one with
  //     its winner, the pending one with the hits to go.
  const v = expect.viewers;
  const fact = (name) => page.textContent(`#detail [data-fact="${name}"] .value`);
  await page.waitForSelector('#detail [data-fact="viewers"]');
  check(await fact("viewers") === v.now, `viewers now of ${h.id} shows ${v.now}`, await fact("viewers"));
  check(await fact("unique-all") === v.uniqueAll && await fact("unique-today") === v.uniqueToday,
    `unique visitors show ${v.uniqueAll} all time and ${v.uniqueToday} today`,
    `${await fact("unique-all")} / ${await fact("unique-today")}`);
  const m = expect.milestones;
  const milestoneRows = await page.$$eval("#detail .milestones tbody tr",
    (trs) => trs.map((tr) => [tr.dataset.n, tr.dataset.status]));
  check(same(milestoneRows, m.rows), "the milestones are listed by N with their status", JSON.stringify(milestoneRows));
  const winner = await page.textContent(`#detail .milestones tr[data-n="${m.rows[0][0]}"] .winner`);
  check(winner.startsWith(m.winner), `the won milestone names its winner: ${m.winner}`, winner);
  // The webhook acknowledged the winner: the page says so (it polls the milestones).
  await page.waitForSelector(`#detail .milestones tr[data-n="${m.rows[0][0]}"] .announced[data-announced=yes]`,
    { timeout: 15000 });
  const announced = await page.textContent(`#detail .milestones tr[data-n="${m.rows[0][0]}"] .announced`);
  check(announced.startsWith("announced "), "the won milestone says the webhook took its announcement", announced);
  const next = await page.textContent(`#detail .milestones .next[data-next="${m.next}"]`);
  check(next.includes(m.toGo), `the next milestone says ${m.toGo}`, next);

  // 6. Regions: the seeded ones, fresh while they sync, stale past the threshold.
  for (const region of expect.regions.fresh) {
    await page.waitForSelector(`#region-rows tr[data-region="${region}"][data-stale=false]`);
    check(true, `region ${region} is listed as fresh`);
  }
  for (const region of expect.regions.stale) {
    await page.waitForSelector(`#region-rows tr[data-region="${region}"][data-stale=true]`, { timeout: 15000 });
    const badge = await page.textContent(`#region-rows tr[data-region="${region}"] .badge`);
    const warning = await page.textContent("#stale-warning");
    check(badge === "Stale" && warning.includes(region) && await page.isVisible("#stale-warning"),
      `region ${region} is flagged stale, with a warning`, `${badge} / ${warning}`);
  }

  // 7. Live refresh: a gauge the test keeps syncing changes on screen, in place, while the
  //    search, the sort and the selection stay as the user left them.
  const l = expect.live;
  await page.fill("#search", l.search);
  const before = await cellText(l.namespace, l.id, "count");
  await page.$eval(`#${l.namespace} tr[data-id="${l.id}"]`, (tr) => { tr.dataset.mark = "kept"; });
  await page.waitForFunction(([ns, id, text]) => {
    const td = document.querySelector(`#${ns} tr[data-id="${id}"] td.count`);
    return td && td.textContent !== text;
  }, [l.namespace, l.id, before], { timeout: 10000 });
  const after = await cellText(l.namespace, l.id, "count");
  check(true, `${l.namespace}/${l.id} went from ${before} to ${after} without a reload`);
  check(await page.getAttribute(`#${l.namespace} tr[data-id="${l.id}"]`, "data-mark") === "kept",
    "its row was updated in place, not rebuilt");
  check(await page.inputValue("#search") === l.search
    && await page.getAttribute("#counters th[data-key=count]", "aria-sort") === "descending"
    && await page.textContent("#detail-title") === h.id,
    "search, sort and selection survive the refresh");

  // 8. The picture.
  await page.fill("#search", "");
  await page.$eval("#search", (input) => input.blur());
  await page.waitForTimeout(300);
  await page.screenshot({ path: need("TALLY_SCREENSHOT") });
  log(`screenshot: ${process.env.TALLY_SCREENSHOT}`);
  check(problems.length === 0, "no error, and no request left the merger", problems.join("\n  "));
} catch (e) {
  console.log(e.message);
  if (problems.length) console.log(`also seen:\n  ${problems.join("\n  ")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
