// A tiny stdio MCP server for the gate tests: one tool, `echo`. Each call
// appends a line to the marker file given as the first argument, so a test
// can tell whether a call ever reached the server.
import { appendFileSync } from "node:fs";
import readline from "node:readline";

const marker = process.argv[2];
const send = (m) => process.stdout.write(JSON.stringify({ jsonrpc: "2.0", ...m }) + "\n");
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let m;
  try {
    m = JSON.parse(line);
  } catch {
    return;
  }
  if (m.id === undefined || m.id === null) return;
  switch (m.method) {
    case "initialize":
      send({
        id: m.id,
        result: {
          protocolVersion: m.params?.protocolVersion ?? "2025-06-18",
          capabilities: { tools: {} },
          serverInfo: { name: "echo", version: "1.0.0" },
        },
      });
      break;
    case "tools/list":
      send({
        id: m.id,
        result: {
          tools: [
            {
              name: "echo",
              description: "Echo the given text back.",
              inputSchema: { type: "object", properties: { text: { type: "string" } }, required: ["text"] },
            },
          ],
        },
      });
      break;
    case "tools/call":
      if (marker) appendFileSync(marker, "called\n");
      send({ id: m.id, result: { content: [{ type: "text", text: `echo: ${m.params?.arguments?.text ?? ""}` }] } });
      break;
    case "ping":
      send({ id: m.id, result: {} });
      break;
    default:
      send({ id: m.id, error: { code: -32601, message: "method not found" } });
  }
});
