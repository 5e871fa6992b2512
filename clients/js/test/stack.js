// The real stack for the end-to-end and browser tests: the Rust harness's
// otako-e2e-stack (tests/src/bin/e2e-stack.rs) starts nats-server, a fresh
// database on the shared test PostgreSQL, gateway nodes and the backend, and
// takes commands (kill, term, start) on stdin.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

function stackBinary() {
  if (process.env.OTAKO_E2E_STACK_BIN) return process.env.OTAKO_E2E_STACK_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target");
  const bin = path.join(target, "debug", "otako-e2e-stack");
  if (!existsSync(bin)) {
    throw new Error(
      `${bin} is missing: build it first with ` +
        "`cargo build -p otako-gateway -p otako-backend-shim -p otako-e2e --bins`",
    );
  }
  return bin;
}

export class Stack {
  /** Starts a stack and waits until every process is ready. */
  static async start({ name, gateways = 2, heartbeatMs } = {}) {
    const args = ["--name", name, "--gateways", String(gateways)];
    if (heartbeatMs) args.push("--heartbeat-ms", String(heartbeatMs));
    const child = spawn(stackBinary(), args, { stdio: ["pipe", "pipe", "inherit"] });
    const stack = new Stack(child);
    const info = await stack.#nextLine(120_000, "the stack to start");
    stack.backend = info.backend;
    // Indexed as the harness indexes them: dead nodes keep their place.
    stack.gateways = [...info.gateways];
    // What the backend's /config.json lists: the nodes at the start.
    stack.publicGateways = [...info.gateways];
    stack.#alive = new Set(stack.gateways);
    stack.logs = info.logs;
    // In the test output, for when something fails.
    console.log(`stack ${name}: backend ${stack.backend}, gateways ${stack.gateways.join(" ")}, logs ${stack.logs}`);
    return stack;
  }

  #child;
  #lines = [];
  #waiters = [];
  #exited = null;
  #alive = new Set();

  constructor(child) {
    this.#child = child;
    const rl = createInterface({ input: child.stdout });
    rl.on("line", (line) => {
      const w = this.#waiters.shift();
      if (w) w.resolve(line);
      else this.#lines.push(line);
    });
    child.on("exit", (code, signal) => {
      this.#exited = { code, signal };
      for (const w of this.#waiters.splice(0)) {
        w.reject(new Error(`otako-e2e-stack exited (${code ?? signal})`));
      }
    });
  }

  async #nextLine(timeoutMs, what) {
    const queued = this.#lines.shift();
    if (queued !== undefined) return JSON.parse(queued);
    if (this.#exited) throw new Error(`otako-e2e-stack exited (${JSON.stringify(this.#exited)})`);
    let timer;
    const line = await new Promise((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
    }).finally(() => clearTimeout(timer));
    return JSON.parse(line);
  }

  async #command(cmd) {
    this.#child.stdin.write(`${cmd}\n`);
    const reply = await this.#nextLine(60_000, `the reply to ${cmd}`);
    if (!reply.ok) throw new Error(`${cmd}: ${reply.error}`);
    return reply;
  }

  /** The URLs of the gateway nodes not killed or stopped. */
  liveGateways() {
    return this.gateways.filter((u) => this.#alive.has(u));
  }

  /** SIGKILLs gateway `i`. */
  async kill(i) {
    await this.#command(`kill ${i}`);
    this.#alive.delete(this.gateways[i]);
  }

  /** SIGTERMs gateway `i` (op 7 and 1012 to its sessions) and waits for its exit. */
  async term(i) {
    await this.#command(`term ${i}`);
    this.#alive.delete(this.gateways[i]);
  }

  /** Starts one more gateway node; resolves to `{index, url}`. */
  async startGateway() {
    const started = await this.#command("start");
    this.gateways[started.index] = started.url;
    this.#alive.add(started.url);
    return started;
  }

  /** Tears everything down (stdin closed) and waits for it. */
  async stop() {
    if (this.#exited) return;
    const exited = new Promise((resolve) => this.#child.once("exit", resolve));
    this.#child.stdin.end();
    let timer;
    await Promise.race([
      exited,
      new Promise((resolve) => {
        timer = setTimeout(() => {
          this.#child.kill("SIGKILL");
          resolve();
        }, 30_000);
      }),
    ]);
    clearTimeout(timer);
  }
}

/** Polls `cond` until it returns a truthy value (returned) or the time is up. */
export async function waitFor(what, cond, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A username unique to this run. */
export function username(prefix) {
  return `${prefix}_${process.pid.toString(36)}_${Math.random().toString(36).slice(2, 8)}`.slice(0, 32);
}
