// The live console of library-api: log in, connect to /ws/{client_id}, follow topics, broadcast.
// Served as a file (no inline script) so the page works under a strict Content Security Policy.
"use strict";

(() => {
  const API = "/api/v1";
  const SUBPROTOCOL = "library-api.v1";
  const FEED_LIMIT = 200;
  const NO_RECONNECT = new Map([
    [4000, "another connection with this client id replaced this one"],
    [4401, "authentication failed"],
    [4403, "this account may not receive live events"],
  ]);

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    refreshToken: null,
    me: null,
    socket: null,
    wanted: false,
    attempt: 0,
    retryTimer: null,
    received: 0,
    reconnects: 0,
    resyncs: 0,
    topics: new Map(), // topic -> last id received (null until known)
    epochs: new Map(), // topic -> the epoch that id belongs to
  };

  function setState(name, detail) {
    const badge = $("state");
    badge.className = `state state-${name}`;
    badge.textContent = detail ? `${name}: ${detail}` : name;
    badge.dataset.state = name;
  }

  function banner(text) {
    const box = $("banner");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function problemText(body, fallback) {
    if (body && typeof body === "object") return body.detail || body.title || fallback;
    return fallback;
  }

  // The access token ends soon: refresh it (rotation) and hand it to the open socket; positions stay as they are.
  async function renewToken() {
    if (!state.refreshToken) return;
    const response = await fetch(`${API}/auth/refresh`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: state.refreshToken }),
    });
    const body = await response.json().catch(() => null);
    if (!response.ok || !body) {
      state.refreshToken = null;
      banner("Your session could not be renewed; log in again.");
      return;
    }
    state.token = body.access_token;
    state.refreshToken = body.refresh_token;
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify({ type: "auth", token: state.token }));
    }
  }

  async function login(event) {
    event.preventDefault();
    $("login-error").hidden = true;
    const form = new URLSearchParams({ username: $("email").value, password: $("password").value });
    const response = await fetch(`${API}/auth/login`, { method: "POST", body: form });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      $("login-error").textContent = problemText(body, `login failed (${response.status})`);
      $("login-error").hidden = false;
      return;
    }
    state.token = body.access_token;
    state.refreshToken = body.refresh_token || null;
    const me = await fetch(`${API}/auth/me`, { headers: { Authorization: `Bearer ${state.token}` } });
    state.me = me.ok ? await me.json() : null;
    const role = state.me ? state.me.role : "unknown";
    $("who").textContent = state.me ? `Logged in as ${state.me.email} (${role}).` : "Logged in.";
    $("logout-button").hidden = false;
    $("login-form").hidden = true;
    $("broadcast-panel").hidden = !["librarian", "admin"].includes(role);
    $("password").value = "";
    if (state.wanted) reconnectNow();
  }

  function logout() {
    state.token = null;
    state.refreshToken = null;
    state.me = null;
    $("who").textContent = "Not logged in.";
    $("logout-button").hidden = true;
    $("login-form").hidden = false;
    $("broadcast-panel").hidden = true;
    if (state.wanted) reconnectNow();
  }

  function socketUrl(clientId) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}/ws/${encodeURIComponent(clientId)}`;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    const clientId = $("client-id").value;
    const protocols = [SUBPROTOCOL];
    if (state.token) protocols.push(`bearer.${state.token}`);
    setState(state.attempt ? "reconnecting" : "connecting");
    const socket = new WebSocket(socketUrl(clientId), protocols);
    state.socket = socket;
    if (!state.token) {
      // No credential in the handshake: say so at once rather than let the server wait for one.
      socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth" })));
    }
    socket.addEventListener("message", (event) => onMessage(socket, event));
    socket.addEventListener("close", (event) => onClose(socket, event));
    $("connect-button").disabled = true;
    $("disconnect-button").disabled = false;
  }

  function reconnectNow() {
    if (state.socket) {
      const old = state.socket;
      state.socket = null;
      old.close(1000, "reconnecting");
    }
    state.attempt = 0;
    connect();
  }

  function send(message) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(message));
    }
  }

  // A position is an id and the epoch it belongs to: after the broker loses its history the ids start again
  // at 1 in a new epoch, and the server answers a position of another epoch (or none) with "resync".
  function subscribe(topic) {
    const last = state.topics.get(topic);
    const message = { type: "subscribe", topic };
    if (last !== null && last !== undefined) {
      message.last_event_id = last;
      const epoch = state.epochs.get(topic);
      if (epoch) message.last_event_epoch = epoch;
    }
    send(message);
  }

  function onMessage(socket, event) {
    if (socket !== state.socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    const data = message.data || {};
    switch (message.type) {
      case "welcome":
        state.attempt = 0;
        setState("connected", `${data.client_id} on worker ${data.worker}`);
        $("subscribe-button").disabled = false;
        banner("");
        for (const topic of state.topics.keys()) subscribe(topic);
        break;
      case "subscribed":
        if (!state.topics.has(data.topic) || state.topics.get(data.topic) === null) {
          state.topics.set(data.topic, data.last_event_id);
          state.epochs.set(data.topic, data.epoch || null);
        }
        renderTopics();
        break;
      case "unsubscribed":
        state.topics.delete(data.topic);
        state.epochs.delete(data.topic);
        renderTopics();
        break;
      case "resync":
        state.topics.set(data.topic, data.latest);
        state.epochs.set(data.topic, data.epoch || null);
        state.resyncs += 1;
        $("resyncs").textContent = String(state.resyncs);
        banner(`Some messages on "${data.topic}" are no longer kept: reload what you show from the API.`);
        break;
      case "auth_expiring":
        renewToken();
        break;
      case "shutdown":
        setState("draining", `server stops by ${data.deadline}`);
        banner(`The server is shutting down (at the latest ${data.deadline}); this page will reconnect.`);
        break;
      case "error":
        banner(`Server: ${data.message}`);
        break;
      default:
        if (message.id !== null && state.topics.has(message.topic)) {
          state.topics.set(message.topic, message.id);
          if (message.epoch) state.epochs.set(message.topic, message.epoch);
        }
        if (message.topic !== "system") {
          state.received += 1;
          $("received").textContent = String(state.received);
        }
    }
    addToFeed(message);
  }

  function onClose(socket, event) {
    if (socket !== state.socket) return;
    state.socket = null;
    $("subscribe-button").disabled = true;
    const reason = event.reason ? ` ${event.reason}` : "";
    if (!state.wanted) {
      setState("disconnected");
      return;
    }
    if (NO_RECONNECT.has(event.code)) {
      state.wanted = false;
      setState("closed", `${event.code} ${NO_RECONNECT.get(event.code)}`);
      $("connect-button").disabled = false;
      $("disconnect-button").disabled = true;
      return;
    }
    state.attempt += 1;
    state.reconnects += 1;
    $("reconnects").textContent = String(state.reconnects);
    const delay = Math.min(10000, 500 * 2 ** Math.min(state.attempt - 1, 5)) * (0.75 + Math.random() / 2);
    setState("reconnecting", `closed ${event.code}${reason}; retrying in ${(delay / 1000).toFixed(1)} s`);
    state.retryTimer = setTimeout(connect, delay);
  }

  function addToFeed(message) {
    const item = document.createElement("li");
    item.className = `message type-${String(message.type).replace(/[^a-z0-9_-]/gi, "")}`;
    item.dataset.type = message.type;
    item.dataset.topic = message.topic;
    const head = document.createElement("span");
    head.className = "head";
    const id = message.id === null ? "" : ` #${message.id}`;
    head.textContent = `${message.ts ? message.ts.slice(11, 23) : ""} ${message.type} · ${message.topic}${id}`;
    const body = document.createElement("code");
    body.textContent = JSON.stringify(message.data);
    item.append(head, body);
    const feed = $("feed");
    feed.prepend(item);
    while (feed.children.length > FEED_LIMIT) feed.lastElementChild.remove();
  }

  function renderTopics() {
    const list = $("subscriptions");
    list.replaceChildren();
    for (const [topic, last] of state.topics) {
      const item = document.createElement("li");
      item.dataset.topic = topic;
      item.textContent = `${topic} (last #${last === null ? "–" : last}) `;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "small";
      remove.textContent = "Unsubscribe";
      remove.addEventListener("click", () => send({ type: "unsubscribe", topic }));
      item.append(remove);
      list.append(item);
    }
  }

  async function broadcast(event) {
    event.preventDefault();
    const result = $("broadcast-result");
    const response = await fetch(`${API}/broadcast`, {
      method: "POST",
      headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ message: $("broadcast-message").value, topic: $("broadcast-topic").value || null }),
    });
    const body = await response.json().catch(() => null);
    result.textContent = response.ok
      ? `Sent to ${body.topic} as #${body.id}.`
      : `Not sent: ${problemText(body, String(response.status))}`;
    if (response.ok) $("broadcast-message").value = "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("client-id").value = `web-${Math.random().toString(36).slice(2, 10)}`;
    $("login-form").addEventListener("submit", (event) => {
      login(event).catch((error) => {
        $("login-error").textContent = `login failed: ${error}`;
        $("login-error").hidden = false;
      });
    });
    $("logout-button").addEventListener("click", logout);
    $("connect-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.wanted = true;
      state.attempt = 0;
      connect();
    });
    $("disconnect-button").addEventListener("click", () => {
      state.wanted = false;
      clearTimeout(state.retryTimer);
      if (state.socket) state.socket.close(1000, "bye");
      else setState("disconnected");
      $("connect-button").disabled = false;
      $("disconnect-button").disabled = true;
    });
    $("subscribe-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const topic = $("topic").value.trim();
      if (!topic) return;
      if (!state.topics.has(topic)) state.topics.set(topic, null);
      subscribe(topic);
      $("topic").value = "";
    });
    $("broadcast-form").addEventListener("submit", (event) => {
      broadcast(event).catch((error) => {
        $("broadcast-result").textContent = `Not sent: ${error}`;
      });
    });
    $("clear-button").addEventListener("click", () => $("feed").replaceChildren());
    document.body.dataset.ready = "true";
  });
})();
