// Test helpers: real herald processes, a fresh PostgreSQL database per test, haproxy, and the
// herald CLI for keys and publishing. Everything started here is stopped by `cleanup()`.
import { spawn, execFileSync, execFile } from "node:child_process";
import { createInterface } from "node:readline";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { writeFileSync, readFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = join(here, "..", "..");
export const HERALD = process.env.HERALD_BIN ?? join(ROOT, "target", "debug", "herald");
export const AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f";
export const REDIS_URL = "redis://127.0.0.1:6379/";
export const MASTER_KEY = "js-test-master-key-0123456789";

// The test command's run tag (HERALD_TEST_RUN, docs/testing.md) goes into every name, so
// scripts/test can count and remove what its run left behind.
const RUN_TAG = (process.env.HERALD_TEST_RUN ?? "").replace(/[^a-z0-9]/g, "");
export const unique = (prefix) => `${prefix}${RUN_TAG}${randomBytes(6).toString("hex")}`;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Everything a test started, torn down in reverse order. */
export class Fixture {
  constructor() {
    this.procs = [];
    this.databases = [];
    this.connections = [];
    this.queue = unique("herald.jstest.");
    this.prefix = unique("herald-js-");
  }

  /** A fresh, migrated database; returns its URL. */
  database() {
    const name = unique("herald_js_");
    psql(`CREATE DATABASE ${name}`);
    this.databases.push(name);
    const url = `postgres://postgres@127.0.0.1:5432/${name}`;
    execFileSync(HERALD, ["migrate"], { env: { ...process.env, HERALD_DATABASE_URL: url }, stdio: ["ignore", "ignore", "pipe"] });
    return url;
  }

  /** Environment for a herald process on the real services. */
  env(databaseUrl, extra = {}) {
    return {
      HERALD_AMQP_URL: AMQP_URL,
      HERALD_REDIS_URL: REDIS_URL,
      HERALD_DATABASE_URL: databaseUrl,
      HERALD_MASTER_KEY: MASTER_KEY,
      HERALD_AMQP_QUEUE: this.queue,
      HERALD_REDIS_PREFIX: this.prefix,
      ...extra,
    };
  }

  /** Starts `herald <role>`; resolves once it prints `listening on`, with its base URL and banner. */
  async herald(role, env) {
    const clean = { ...process.env };
    for (const k of Object.keys(clean)) if (k.startsWith("HERALD_")) delete clean[k];
    const child = spawn(HERALD, role ? [role] : [], {
      env: { ...clean, HERALD_LISTEN: "127.0.0.1:0", RUST_LOG: "warn", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.procs.push(child);
    let stderr = "";
    child.stderr.on("data", (d) => { stderr = (stderr + d).slice(-4000); });
    const banner = [];
    const lines = createInterface({ input: child.stdout });
    const url = await new Promise((resolve, reject) => {
      // Generous: a debug binary on a busy 2-core machine; this bounds a hang, it measures nothing.
      const timer = setTimeout(() => reject(new Error(`herald ${role} printed no "listening on" line within 60 s; stderr: ${stderr}`)), 60000);
      child.on("error", (e) => { clearTimeout(timer); reject(new Error(`cannot run ${HERALD} (build it with cargo build, or set HERALD_BIN): ${e.message}`)); });
      child.on("exit", (code, signal) => { clearTimeout(timer); reject(new Error(`herald ${role} exited (${code ?? signal}) before listening; stderr: ${stderr}`)); });
      lines.on("line", (line) => {
        banner.push(line);
        const m = line.match(/^listening on (http:\/\/\S+)/);
        if (m) { clearTimeout(timer); resolve(m[1]); }
      });
    });
    // The rest of the banner (standalone prints keys right after).
    await sleep(100);
    return { url, banner, child };
  }

  /** Waits until GET {url}/readyz answers 200 (bounded). */
  async ready(url) {
    for (let i = 0; i < 200; i++) {
      try {
        if ((await fetch(`${url}/readyz`)).status === 200) return;
      } catch { /* not yet */ }
      await sleep(100);
    }
    throw new Error(`${url} never became ready`);
  }

  /**
   * Starts haproxy in the foreground in front of `servers` (host:port list). Returns its URL and
   * `log`, the lines haproxy has written so far (one per request: `... gateways/node0 ... 101 ...`).
   */
  async haproxy(servers, { denyWebSockets = false } = {}) {
    const port = await freePort();
    const template = readFileSync(join(ROOT, "deploy", "haproxy", "haproxy.cfg"), "utf8");
    // `denyWebSockets`: a proxy that answers every WebSocket upgrade 403, as some corporate
    // proxies do; SignalR clients must fall back to another transport by themselves.
    const deny = denyWebSockets ? "\n    http-request deny deny_status 403 if { hdr(upgrade) -i websocket }" : "";
    const cfg = template
      .replace(/^(frontend herald\b.*)$/m, (m) => m + deny)
      .replace(/^(\s*bind\s+)\S+/m, `$1127.0.0.1:${port}`)
      .replace(/^\s*server\s+gateway-\d+.*$/gm, "")
      .replace(/^(backend gateways\b.*)$/m, (m) => m + "\n" + servers.map((s, i) => `    server node${i} ${s} check inter 500ms`).join("\n"));
    const dir = mkdtempSync(join(tmpdir(), `herald-haproxy-${RUN_TAG}`));
    const file = join(dir, "haproxy.cfg");
    writeFileSync(file, cfg);
    try {
      execFileSync("haproxy", ["-c", "-q", "-f", file], { stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      throw new Error(`haproxy -c rejected the rendered ${file}: ${e.stderr}\n${cfg}`);
    }
    const child = spawn("haproxy", ["-db", "-f", file], { stdio: ["ignore", "pipe", "pipe"] });
    this.procs.push(child);
    const log = [];
    createInterface({ input: child.stdout }).on("line", (l) => log.push(l));
    createInterface({ input: child.stderr }).on("line", (l) => log.push(l));
    child.on("error", (e) => log.push(`cannot run haproxy: ${e.message}`));
    const url = `http://127.0.0.1:${port}`;
    await this.ready(url);
    return { url, log };
  }

  track(connection) {
    this.connections.push(connection);
    return connection;
  }

  async cleanup() {
    for (const c of this.connections) await c.stop().catch(() => {});
    for (const p of this.procs.reverse()) {
      p.kill("SIGTERM");
      // A process a test killed has a signalCode and no exitCode; its "exit" already fired.
      await new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once("exit", r)));
    }
    for (const db of this.databases) psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    // This fixture's queues would otherwise pile up in RabbitMQ (and keep receiving whatever is
    // published to the shared MassTransit exchanges they are bound to).
    await Promise.all([this.queue, `${this.queue}.dead`, `${this.queue}.retry`].map((q) =>
      run("rabbitmqctl", ["-q", "delete_queue", q]).catch(() => {})));
    // Its Redis keys (history streams, dedupe marks, task registry) too.
    await run("sh", ["-c", `redis-cli -h 127.0.0.1 --scan --pattern '${this.prefix}*' | xargs -r redis-cli -h 127.0.0.1 del >/dev/null`]).catch(() => {});
  }
}

/** Runs a command without blocking the event loop; bounded, output ignored. */
function run(cmd, args) {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { timeout: 60000 }, (err) => (err ? reject(err) : resolve())));
}

function psql(sql) {
  execFileSync("psql", ["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", sql], { stdio: ["ignore", "ignore", "pipe"] });
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

/** `herald keys create`: stdout is exactly the raw key. */
export function createKey(databaseUrl, id, { budget, period } = {}) {
  const args = ["keys", "create", "--id", String(id), "--name", `js-${id}`];
  if (budget) args.push("--budget", budget);
  if (period) args.push("--period", period);
  const out = execFileSync(HERALD, args, { env: { ...process.env, HERALD_DATABASE_URL: databaseUrl }, stdio: ["ignore", "pipe", "pipe"] });
  return out.toString().trimEnd();
}

/** `herald publish` to this fixture's queue. */
export function publish(fixture, type, body, { id, envelope = "cloudevents" } = {}) {
  // A string body is sent as is, so a test can choose the exact digits of a number.
  const json = typeof body === "string" ? body : JSON.stringify(body);
  const args = ["publish", type, "--json", json, "--envelope", envelope];
  if (id) args.push("--id", id);
  execFileSync(HERALD, args, {
    env: { ...process.env, HERALD_AMQP_URL: AMQP_URL, HERALD_AMQP_QUEUE: fixture.queue },
    stdio: ["ignore", "ignore", "pipe"],
  });
}

/** Collects the invocations of `names` on a connection, in arrival order. */
export function collect(connection, names) {
  const events = [];
  for (const name of names) connection.on(name, (arg) => events.push({ name, arg }));
  return events;
}

/** Waits (bounded) until `predicate()` holds. */
export async function until(predicate, what, ms = 15000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (predicate()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/**
 * A raw SignalR JSON-protocol client over `ws` (the library @microsoft/signalr itself uses), to see
 * the exact text Herald writes: the stock client parses numbers into JS doubles, losing digits.
 * Resolves once the handshake is answered; `records` collects every text record after it.
 */
export function rawSpendClient(baseUrl, key, hub = "/hubs/spend") {
  return new Promise((resolve, reject) => {
    const url = `${baseUrl.replace(/^http/, "ws")}${hub}?access_token=${encodeURIComponent(key)}`;
    const ws = new WebSocket(url);
    const client = { ws, records: [], stop: async () => ws.terminate() };
    let handshaken = false;
    ws.on("open", () => ws.send(JSON.stringify({ protocol: "json", version: 1 }) + "\x1e"));
    ws.on("message", (data) => {
      for (const record of data.toString("utf8").split("\x1e").filter(Boolean)) {
        if (!handshaken) {
          handshaken = true;
          const reply = JSON.parse(record);
          if (reply.error) reject(new Error(`handshake refused: ${reply.error}`));
          else resolve(client);
        } else {
          client.records.push(record);
        }
      }
    });
    ws.on("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
    ws.on("error", reject);
  });
}

/**
 * The documented resume pattern (docs/protocol.md, "Cursors and resume") on a stock client with
 * automatic reconnect: records the id and cursor of every `event`, keeps the cursor it had when
 * the connection dropped, and after the reconnect invokes Resume with that one (live events can
 * reach the new connection before onreconnected runs, and their cursor is past what was missed).
 * Returns the ids received and the Resume results, both growing as they arrive.
 */
export function resumeAfterReconnect(conn, event = "SpendUpdate") {
  const seen = { received: [], resumes: [], lastCursor: null };
  let resumeFrom = null;
  conn.on(event, (e) => {
    seen.received.push(e.eventId);
    seen.lastCursor = e.cursor;
  });
  conn.onreconnecting(() => { resumeFrom = seen.lastCursor; });
  conn.onreconnected(async () => seen.resumes.push(await conn.invoke("Resume", resumeFrom)));
  return seen;
}

/** Starts recording frame intervals in the page. */
export const startFrames = (page) => page.evaluate(() => {
  window.__frames = [];
  let last = performance.now();
  const tick = (t) => {
    window.__frames.push(t - last);
    last = t;
    if (window.__frames !== null) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
});
/** Stops recording; p50/p95/p99/max of the intervals, in ms. */
export const stopFrames = (page) => page.evaluate(() => {
  const f = window.__frames.slice(1).sort((a, b) => a - b);
  window.__frames = null;
  const q = (p) => Math.round(f[Math.min(f.length - 1, Math.floor(p * f.length))] * 10) / 10;
  return { frames: f.length, p50: q(0.5), p95: q(0.95), p99: q(0.99), max: Math.round(f.at(-1) ?? 0), over50ms: f.filter((x) => x > 50).length };
});
