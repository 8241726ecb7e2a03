#!/usr/bin/env node
// Follow Library API live events from Node.js, reconnecting and resuming from the last event id.
//
//   node watch.mjs --url http://127.0.0.1:8000 --token "$LIBRARY_API_TOKEN" --topic books --topic broadcast
//
// Prints one JSON line per event ({"kind": "event" | "resync" | "status", ...}), after a first status line naming
// the WebSocket implementation in use. `--resume TOPIC:ID:EPOCH` starts from a position kept by a previous run.
// Runs on Node.js 18 or later: run `npm ci` here first; it uses the global WebSocket where there is one (Node 22+,
// or Node 20/21 with --experimental-websocket) and the `ws` package of package.json otherwise (Node 18 to 21).
import { parseArgs } from "node:util";
import { LiveClient } from "../live-client/liveClient.mjs";

const { values } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:8000" },
    token: { type: "string", default: process.env.LIBRARY_API_TOKEN },
    "client-id": { type: "string", default: `node-${process.pid}` },
    topic: { type: "string", multiple: true, default: ["books"] },
    resume: { type: "string", multiple: true, default: [] },
  },
});

async function webSocketImpl() {
  if (globalThis.WebSocket) return { name: "global", WebSocket: globalThis.WebSocket };
  try {
    return { name: "ws", WebSocket: (await import("ws")).WebSocket };
  } catch {
    console.error("error: no WebSocket: run `npm ci` in examples/node (or use Node 22+)");
    process.exit(2);
  }
}

const positions = {};
for (const item of values.resume) {
  const [topic, id, epoch] = item.split(":");
  positions[topic] = { id: Number(id), epoch: epoch || null };
}
const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const implementation = await webSocketImpl();
print({ kind: "status", state: "starting", websocket: implementation.name, node: process.versions.node });
const client = new LiveClient({
  baseUrl: values.url,
  clientId: values["client-id"],
  token: values.token,
  topics: values.topic,
  positions,
  WebSocketImpl: implementation.WebSocket,
  onEvent: (message) => print({ kind: "event", topic: message.topic, id: message.id, type: message.type, data: message.data }),
  onResync: (data) => print({ kind: "resync", topic: data.topic, latest: data.latest, reason: data.reason }),
  onStatus: (status) => {
    print({ kind: "status", ...status });
    if (status.state === "stopped") process.exit(1);
  },
}).start();

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    client.stop();
    setTimeout(() => process.exit(0), 100);
  });
}
