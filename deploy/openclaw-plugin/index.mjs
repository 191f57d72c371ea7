// DefenseClaw gate for OpenClaw: before every tool call runs, ask the
// DefenseClaw daemon over its gate socket and do what it decides — run it,
// block it (the model sees why), or hold it for a named human's approval.
// Node built-ins only; the only connection it opens is the daemon's Unix socket.
// Fails closed: no answer within decisionTimeoutMs blocks the call unless
// onDaemonUnreachable is "allow".

import net from "node:net";
import { readFileSync } from "node:fs";

export const PLUGIN_ID = "defenseclaw-gate";
/** The plugin's version: package.json's, which is the DefenseClaw release. */
export const PLUGIN_VERSION = JSON.parse(
  readFileSync(new URL("./package.json", import.meta.url), "utf8"),
).version;

const DEFAULT_TIMEOUT_MS = 1500;
const MIN_TIMEOUT_MS = 50;
const MAX_TIMEOUT_MS = 10000;
/** Largest answer line accepted from the daemon. */
const MAX_ANSWER_BYTES = 64 * 1024;
/** Largest serialized tool call sent; a larger one is blocked (cannot be inspected). */
const MAX_CALL_BYTES = 512 * 1024;
/** Most requests waiting on the one connection. */
const MAX_PENDING = 256;

/** The plugin config (plugins.entries.defenseclaw-gate.config), with defaults and bounds. */
export function settings(raw) {
  const c = raw && typeof raw === "object" ? raw : {};
  const socketPath =
    typeof c.socketPath === "string" && c.socketPath.startsWith("/") ? c.socketPath : null;
  const onDaemonUnreachable = c.onDaemonUnreachable === "allow" ? "allow" : "deny";
  let t = Number.isInteger(c.decisionTimeoutMs) ? c.decisionTimeoutMs : DEFAULT_TIMEOUT_MS;
  t = Math.min(Math.max(t, MIN_TIMEOUT_MS), MAX_TIMEOUT_MS);
  return { socketPath, onDaemonUnreachable, decisionTimeoutMs: t };
}

/** `{server, tool}` when the tool name has OpenClaw's MCP form `<server>__<tool>`. */
export function mcpOf(toolName) {
  if (typeof toolName !== "string") return undefined;
  const name = toolName.startsWith("mcp__") ? toolName.slice(5) : toolName;
  const i = name.indexOf("__");
  if (i <= 0 || i + 2 >= name.length) return undefined;
  return { server: name.slice(0, i), tool: name.slice(i + 2) };
}

/** One persistent connection to the gate socket; newline-delimited JSON, answers by id. */
export class GateClient {
  constructor(socketPath) {
    this.socketPath = socketPath;
    this.sock = null;
    this.connecting = null;
    this.pending = new Map();
    this.nextId = 1;
    this.buf = "";
  }

  connect(deadline) {
    if (this.sock) return Promise.resolve();
    if (this.connecting) return this.connecting;
    this.connecting = new Promise((resolve, reject) => {
      const s = net.createConnection({ path: this.socketPath });
      const timer = setTimeout(
        () => s.destroy(new Error("connecting timed out")),
        Math.max(1, deadline - Date.now()),
      );
      s.setEncoding("utf8");
      s.once("connect", () => {
        clearTimeout(timer);
        this.sock = s;
        this.connecting = null;
        resolve();
      });
      s.on("data", (d) => this.onData(s, d));
      s.on("error", (e) => {
        clearTimeout(timer);
        this.connecting = null;
        this.drop(s, e);
        reject(e);
      });
      s.on("close", () => {
        clearTimeout(timer);
        this.connecting = null;
        this.drop(s, new Error("the daemon closed the connection"));
        reject(new Error("the daemon closed the connection"));
      });
    });
    return this.connecting;
  }

  drop(s, err) {
    if (this.sock === s) this.sock = null;
    s.destroy();
    this.buf = "";
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  onData(s, chunk) {
    this.buf += chunk;
    let nl;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        this.drop(s, new Error("malformed answer from the daemon"));
        return;
      }
      const p = this.pending.get(msg.id);
      if (p) {
        this.pending.delete(msg.id);
        p.resolve(msg);
      } else if (msg.id === null && msg.ok === false) {
        // A refusal of the whole connection (peer not allowed, too many connections, oversized frame).
        this.drop(s, new Error(String(msg.error)));
        return;
      }
    }
    if (this.buf.length > MAX_ANSWER_BYTES) this.drop(s, new Error("oversized answer from the daemon"));
  }

  /** Sends `body` with a fresh id; resolves with the answer or rejects at `deadline`. */
  request(body, deadline) {
    if (!this.sock) return Promise.reject(new Error("not connected"));
    if (this.pending.size >= MAX_PENDING) return Promise.reject(new Error("too many pending requests"));
    const id = this.nextId++;
    const line = JSON.stringify({ id, ...body }) + "\n";
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no answer within ${Math.max(0, deadline - (Date.now() - 1))} ms`));
      }, Math.max(1, deadline - Date.now()));
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sock.write(line);
    });
  }
}

function block(reason) {
  return { block: true, blockReason: reason };
}

/** The hook's answer for one call: undefined (run), block, or requireApproval. */
export async function decide(client, cfg, event, ctx, log) {
  const started = Date.now();
  const deadline = started + cfg.decisionTimeoutMs;
  const failed = (why) => {
    if (cfg.onDaemonUnreachable === "allow") {
      log?.warn?.(`defenseclaw-gate: ${why}; allowing ${event?.toolName} (onDaemonUnreachable = allow)`);
      return undefined;
    }
    return block(
      `Blocked by DefenseClaw's gate: ${why}. Tool calls are denied while the DefenseClaw daemon is unreachable.`,
    );
  };
  if (!client) return failed("the plugin has no socketPath configured");
  const call = {
    tool: event?.toolName,
    params: event?.params ?? {},
    agentId: ctx?.agentId,
    sessionKey: ctx?.sessionKey,
    sessionId: ctx?.sessionId,
    runId: event?.runId ?? ctx?.runId,
    toolCallId: event?.toolCallId ?? ctx?.toolCallId,
  };
  const mcp = mcpOf(event?.toolName);
  if (mcp) call.mcp = mcp;
  if (JSON.stringify(call).length > MAX_CALL_BYTES) {
    return block("Blocked by DefenseClaw's gate: the tool call is too large to inspect.");
  }
  let ans;
  try {
    await client.connect(deadline);
    ans = await client.request({ op: "decide", plugin_version: PLUGIN_VERSION, call }, deadline);
  } catch (e) {
    return failed(`the DefenseClaw daemon did not answer (${e?.message ?? e})`);
  }
  if (!ans || ans.ok !== true) {
    return block(`Blocked by DefenseClaw: the daemon refused the request (${ans?.error ?? "no answer"}).`);
  }
  switch (ans.decision) {
    case "allow":
      return undefined;
    case "deny":
      return block(String(ans.reason || "Blocked by DefenseClaw."));
    case "ask":
      return {
        requireApproval: {
          title: String(ans.title || `${ans.code} approve ${event?.toolName}`).slice(0, 80),
          description: String(ans.description || ans.reason || "DefenseClaw asks a human.").slice(0, 512),
          severity: "warning",
          timeoutMs: Number.isInteger(ans.timeout_ms) ? ans.timeout_ms : 300000,
          allowedDecisions: ["allow-once", "deny"],
        },
      };
    default:
      return block(`Blocked by DefenseClaw: unknown decision ${JSON.stringify(ans.decision)}.`);
  }
}

export default {
  id: PLUGIN_ID,
  name: "DefenseClaw gate",
  description: "Asks the DefenseClaw daemon before every tool call runs.",
  register(api) {
    const cfg = settings(api.pluginConfig);
    const client = cfg.socketPath ? new GateClient(cfg.socketPath) : null;
    if (!client) api.logger?.warn?.("defenseclaw-gate: no socketPath configured; tool calls will be blocked");
    api.on("before_tool_call", (event, ctx) => decide(client, cfg, event, ctx, api.logger), {
      priority: 1000,
    });
  },
};
