// Builds the package (tsc: ESM + .d.ts into dist/) and, with --dashboard, the dashboard bundle
// (esbuild, pinned in package-lock.json) into dashboard/dist/, which is committed and embedded in
// the herald binary. The bundle's first line names a SHA-256 of its sources (sourceHash below);
// tests/dashboard_bundle (Rust) recomputes it and test/bundle.test.mjs rebuilds the bundle and
// compares bytes, so a source edit without a rebuild fails the tests (docs/decisions.md).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const DASHBOARD_OUT = join(HERE, "dashboard", "dist");

/** The files the bundle is made of, relative to clients/js, sorted. */
export function sourceFiles() {
  const files = ["package-lock.json"];
  for (const dir of ["src", "dashboard"]) {
    for (const name of readdirSync(join(HERE, dir))) {
      if (/\.(ts|css|html)$/.test(name)) files.push(`${dir}/${name}`);
    }
  }
  return files.sort();
}

/** SHA-256 over each source file as `path NUL contents NUL`, in sourceFiles() order. */
export function sourceHash() {
  const h = createHash("sha256");
  for (const f of sourceFiles()) {
    h.update(f);
    h.update("\0");
    h.update(readFileSync(join(HERE, f)));
    h.update("\0");
  }
  return h.digest("hex");
}

/** Builds the dashboard; with write: false returns the outputs ({path, text}) instead. */
export async function buildDashboard({ write = true } = {}) {
  const esbuild = await import("esbuild");
  const result = await esbuild.build({
    absWorkingDir: HERE,
    entryPoints: { dashboard: "dashboard/main.ts" },
    outdir: "dashboard/dist",
    bundle: true,
    minify: true,
    format: "iife",
    target: ["es2020", "chrome100", "firefox100", "safari15"],
    platform: "browser",
    legalComments: "eof",
    charset: "utf8",
    banner: { js: `/* herald dashboard; sources sha256 ${sourceHash()} */`, css: `/* herald dashboard; sources sha256 ${sourceHash()} */` },
    write: false,
    logLevel: "warning",
  });
  const outputs = result.outputFiles.map((f) => ({ path: f.path, text: f.text }));
  if (write) {
    mkdirSync(DASHBOARD_OUT, { recursive: true });
    for (const o of outputs) writeFileSync(o.path, o.text);
  }
  return outputs;
}

function tsc(project) {
  execFileSync(process.execPath, [join(HERE, "node_modules", "typescript", "bin", "tsc"), "-p", join(HERE, project)], { stdio: "inherit" });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  tsc("tsconfig.json");
  tsc("tsconfig.dashboard.json"); // type check only
  if (process.argv.includes("--dashboard")) {
    const out = await buildDashboard();
    for (const o of out) console.log(`wrote ${o.path.slice(HERE.length + 1)} (${o.text.length} bytes)`);
  }
}
