// A client of the Library API live event stream (/ws/{client_id}) for browsers and Node.js alike.
//
// It keeps, per topic, the position of the last event it received (`id` within an `epoch`), and whenever it
// (re)connects it subscribes again from that position: the server replays what was missed, exactly once and in
// order. When the position cannot be resumed (another epoch, trimmed history, ...) the server answers `resync`:
// the client calls `onResync` (reload what you show from the REST API) and carries on from the new position.
// A `shutdown` notice (the server drains) makes it leave and reconnect, to another instance behind the balancer.
// Close codes 4401/4403/1008 are final (bad or revoked credentials): it stops instead of retrying.
//
// The token travels in the `bearer.<token>` subprotocol, since browsers cannot set headers on a WebSocket.

export const FINAL_CLOSE_CODES = new Set([1008, 4400, 4401, 4403]);

export class LiveClient {
  constructor({
    baseUrl,
    clientId,
    token = null,
    topics = ["books"],
    positions = {},
    WebSocketImpl = globalThis.WebSocket,
    onEvent = () => {},
    onResync = () => {},
    onStatus = () => {},
    getFreshToken = null,
    maxBackoffMs = 10_000,
  }) {
    if (!WebSocketImpl) throw new Error("no WebSocket implementation: pass WebSocketImpl (e.g. the ws package)");
    const [scheme, rest] = baseUrl.replace(/\/+$/, "").split("://");
    this.url = `${scheme === "https" ? "wss" : scheme === "http" ? "ws" : scheme}://${rest}/ws/${encodeURIComponent(clientId)}`;
    this.token = token;
    this.topics = [...topics];
    // topic -> {id, epoch}: where to resume from; seeded by the caller to resume a previous session.
    this.positions = new Map(Object.entries(positions));
    this.WebSocketImpl = WebSocketImpl;
    this.onEvent = onEvent;
    this.onResync = onResync;
    this.onStatus = onStatus;
    this.getFreshToken = getFreshToken;
    this.maxBackoffMs = maxBackoffMs;
    this.socket = null;
    this.stopped = false;
    this.attempt = 0;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this._connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "client stopping");
  }

  subscribeCommand(topic) {
    const command = { type: "subscribe", topic };
    const position = this.positions.get(topic);
    if (position && position.id !== null && position.id !== undefined) {
      command.last_event_id = position.id;
      if (position.epoch) command.last_event_epoch = position.epoch;
    }
    return command;
  }

  _send(command) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(command));
  }

  _connect() {
    const protocols = ["library-api.v1"];
    if (this.token) protocols.push(`bearer.${this.token}`);
    const socket = new this.WebSocketImpl(this.url, protocols);
    this.socket = socket;
    this.onStatus({ state: "connecting", url: this.url });
    socket.onmessage = (event) => this._handle(JSON.parse(typeof event.data === "string" ? event.data : String(event.data)));
    socket.onclose = (event) => this._closed(event.code, event.reason);
    socket.onerror = () => {}; // a close follows every error
  }

  _handle(message) {
    const data = message.data || {};
    switch (message.type) {
      case "welcome":
        this.attempt = 0;
        this.onStatus({ state: "connected", worker: data.worker });
        for (const topic of this.topics) this._send(this.subscribeCommand(topic));
        return;
      case "subscribed":
        if (!this.positions.has(data.topic) || this.positions.get(data.topic).id == null) {
          this.positions.set(data.topic, { id: data.last_event_id, epoch: data.epoch });
        }
        this.onStatus({ state: "subscribed", topic: data.topic, replayed: data.replayed ?? 0 });
        return;
      case "resync":
        this.positions.set(data.topic, { id: data.latest, epoch: data.epoch });
        this.onResync(data);
        return;
      case "shutdown":
        this.onStatus({ state: "server-draining", secondsLeft: data.seconds_left });
        this.socket.close(1000, "leaving a draining server");
        return;
      case "auth_expiring":
        if (this.getFreshToken) {
          Promise.resolve(this.getFreshToken(this.token)).then((token) => {
            if (token) {
              this.token = token;
              this._send({ type: "auth", token });
            }
          });
        }
        return;
      default:
        break;
    }
    if (message.id === null || message.id === undefined || !this.positions.has(message.topic)) {
      this.onEvent(message); // control replies and heartbeats carry no position
      return;
    }
    const last = this.positions.get(message.topic);
    if (last.id !== null && last.id !== undefined && last.epoch === message.epoch && message.id <= last.id) return;
    this.positions.set(message.topic, { id: message.id, epoch: message.epoch ?? last.epoch });
    this.onEvent(message);
  }

  _closed(code, reason) {
    this.socket = null;
    if (FINAL_CLOSE_CODES.has(code)) {
      this.stopped = true;
      this.onStatus({ state: "stopped", code, reason });
      return;
    }
    if (this.stopped) {
      this.onStatus({ state: "closed", code, reason });
      return;
    }
    this.attempt += 1;
    const delay = Math.min(this.maxBackoffMs, 250 * 2 ** (this.attempt - 1)) * (0.5 + Math.random() / 2);
    this.onStatus({ state: "reconnecting", code, reason, delayMs: Math.round(delay) });
    this.timer = setTimeout(() => this._connect(), delay);
  }
}
