#!/usr/bin/env node
// Follow Library API live events from Node.js, reconnecting and resuming from the last event id.
//
//   node watch.mjs --url http://127.0.0.1:8000 --token "$LIBRARY_API_TOKEN" --topic books --topic broadcast
//
// Prints one JSON line per event ({"kind": "event" | "resync" | "status", ...}). `--resume TOPIC:ID:EPOCH`
// starts from a position kept by a previous run. Node 22+ has a global WebSocket; on Node 20 run it with
// `node --experimental-websocket`, or `npm install ws` next to it.
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
  if (globalThis.WebSocket) return globalThis.WebSocket;
  try {
    return (await import("ws")).default;
  } catch {
    console.error("error: no WebSocket: use Node 22+, node --experimental-websocket, or npm install ws");
    process.exit(2);
  }
}

const positions = {};
for (const item of values.resume) {
  const [topic, id, epoch] = item.split(":");
  positions[topic] = { id: Number(id), epoch: epoch || null };
}
const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const client = new LiveClient({
  baseUrl: values.url,
  clientId: values["client-id"],
  token: values.token,
  topics: values.topic,
  positions,
  WebSocketImpl: await webSocketImpl(),
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
