// By hand (scripts/bench-dashboard; docs/benchmarks.md, "The dashboard under load"): the
// dashboard's frame times while events arrive over the network at a steady rate. A release
// `herald standalone` serves the page in Debian's chromium, opened with the master key (the
// admin view: every key's events reach the page); the load generator (herald-bench, Rust,
// keep-alive publishers) posts SpendUpdated events for its own keys at RATE/s for SECONDS, and
// the page counts what arrives. Not a test: it prints one JSON line and asserts nothing but that
// the events arrived.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { Fixture, sleep, startFrames, stopFrames } from "./helpers.mjs";

const CHROMIUM = process.env.HERALD_CHROMIUM ?? "/usr/bin/chromium";
const BENCH = process.env.HERALD_BENCH_BIN;
const RATE = Number(process.env.RATE ?? 1000);
const SECONDS = Number(process.env.SECONDS_LOAD ?? 10);
if (!BENCH) throw new Error("set HERALD_BENCH_BIN (scripts/bench-dashboard does)");

const f = new Fixture();
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
try {
  const { url, banner } = await f.herald(null, {
    HERALD_HISTORY_MAXLEN: "50000",
    HERALD_MAX_CONNECTIONS_PER_ADDRESS: "100000",
    HERALD_MAX_CONNECTIONS_PER_KEY: "100000",
  });
  const master = banner.find((l) => l.startsWith("master key: "))?.slice("master key: ".length);
  if (!master) throw new Error(`no master key in the banner: ${banner.join(" | ")}`);
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${url}/#key=${master}`);
  for (let i = 0; i < 200 && (await page.evaluate(() => document.querySelector("#status").dataset.status)) !== "connected"; i++) await sleep(100);
  const received = () => page.evaluate(() => window.heraldDashboard.received.length);
  const before = await received();

  await startFrames(page);
  const host = url.replace(/^http:\/\//, "");
  const bench = spawn(BENCH, [
    "--target", "herald", "--url", `ws://${host}`, "--http", host, "--master-key", master,
    "--source", "http", "--rate", String(RATE), "--duration", String(SECONDS), "-n", "10", "-k", "10",
    "--publishers", "16", "--hold", "1", "--drain", "10", "--label", "dashboard-frames",
  ], { stdio: ["ignore", "pipe", "inherit"] });
  let benchOut = "";
  bench.stdout.on("data", (d) => { benchOut += d; });
  await new Promise((resolve) => bench.on("exit", resolve));
  const frames = await stopFrames(page);
  const got = (await received()) - before;
  const load = JSON.parse(benchOut.trim().split("\n").at(-1) || "{}");
  console.log(JSON.stringify({ rate: RATE, seconds: SECONDS, published: load.published, events_per_s: load.events_per_s, page_received: got, frames }));
  if (got < load.published) throw new Error(`the page received ${got} of ${load.published} events`);
} finally {
  await browser.close().catch(() => {});
  await f.cleanup();
}
