// modelence-trio browser client: the Modelence client API over protocol v1
// (protocol.md). One dependency-free ES module, served by every App at
// /_modelence/modelence.js; types in modelence.d.ts beside it.
//
//   import { startWebsockets, ClientChannel, callMethod } from "/_modelence/modelence.js";
//   const chat = new ClientChannel("chat", (data, { id }) => show(id, data));
//   startWebsockets({ channels: [chat], token });
//   await chat.joinChannel("lobby");
//   await callMethod("chat.sendMessage", { room: "lobby", text: "hi" });
//
// Unlike the reference client, it re-joins every joined channel after a
// reconnect, asking for the messages it missed meanwhile (they arrive in
// order and once, before live ones; onRecoveryFailed says when the server no
// longer has them), and join refusals reach the app (a rejected promise and
// the onJoinError callbacks), not only the console.

const PROTOCOL = 1;

/** A call to a method failed: `status` is the HTTP status, `code` the X-Modelence-Error-Code. */
export class MethodError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = "MethodError";
    this.status = status;
    this.code = code;
  }
}

/** The server refused the session token (`code`: "invalid_token" at connect, "session_ended"
 * when the session ended while connected). The client waits for a new token (setAuthToken). */
export class AuthError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "AuthError";
    this.code = code;
  }
}

/** The server refused to join a channel (`code`: access_denied, unknown_channel, ...). */
export class JoinError extends Error {
  constructor(channel, code, message) {
    super(`${channel}: ${message}`);
    this.name = "JoinError";
    this.channel = channel;
    this.code = code;
  }
}

const settings = { token: undefined, getToken: undefined, baseUrl: "" };
let connection = null;

/** Set (or clear, with null) the session token used by the WebSocket and by callMethod. The
 * socket connects again with it at once (signing out or in takes effect there too), re-joining
 * its channels; after a refusal (status "unauthorized") that is how the client goes on. */
export function setAuthToken(token) {
  settings.token = token ?? undefined;
  connection?.tokenChanged();
}

/** The token to use now: the app's getToken hook (called on every connect and call), else the one set. */
async function currentToken() {
  return settings.getToken ? ((await settings.getToken()) ?? undefined) : settings.token;
}

export class ClientChannel {
  /**
   * @param category the part of channel names before the ":"
   * @param onMessage called as onMessage(data, { channel, id }) for every message
   * @param options.onJoinError called as onJoinError(error) when a join of this category is refused
   * @param options.onPresence on a category with presence, called as
   *   onPresence({ count, members, truncated }, { channel, id }) after each change of who is there
   */
  constructor(category, onMessage, options = {}) {
    if (!category || category.includes(":")) {
      throw new TypeError(`a channel category must be non-empty and without ':': ${category}`);
    }
    this.category = category;
    this.onMessage = onMessage;
    this.onJoinError = options.onJoinError;
    this.onPresence = options.onPresence;
  }

  /** Join `${category}:${id}`; resolves once joined, rejects with JoinError if refused.
   * Joins made before the connection is up are sent when it is. `options.last`: also get the
   * channel's last messages (at most that many, as far as the server's history holds), before
   * live ones (a room's recent history on entering it). */
  joinChannel(id, options = {}) {
    return requireConnection().join(this, `${this.category}:${id}`, options?.last);
  }

  /** Leave `${category}:${id}`; resolves once left (at once if not connected). */
  leaveChannel(id) {
    return requireConnection().leave(`${this.category}:${id}`);
  }

  /** Publish `data` into the joined channel `${category}:${id}` (its server side must accept
   * publishes); resolves once the server has handled it, rejects with its error otherwise. */
  publishToChannel(id, data) {
    return requireConnection().publish(`${this.category}:${id}`, data);
  }

  /** Who is in the joined presence channel `${category}:${id}`, as last heard:
   * { count, members: [{ key, connections, meta }] (null on a counts-only channel), truncated }. */
  presence(id) {
    return requireConnection().presenceOf(`${this.category}:${id}`);
  }

  /** Ask the server who is in the joined channel now; resolves with presence(id)'s shape. */
  fetchPresence(id) {
    const name = `${this.category}:${id}`;
    const connection = requireConnection();
    if (!connection.ready) return Promise.reject(new Error(`not connected: cannot ask who is in ${name}`));
    return connection.request({ type: "presence", channel: name }).then(() => connection.presenceOf(name));
  }
}

/**
 * Connect once (a second call warns and does nothing), as in Modelence.
 * @param options.channels the ClientChannel objects whose messages to receive
 * @param options.url WebSocket URL (default: ws(s)://<this host>/ws)
 * @param options.token session token (default: none; setAuthToken also sets it)
 * @param options.getToken async () => token, called before every (re)connect and method call,
 *   so an app can refresh tokens; takes precedence over options.token
 * @param options.onAuthError called with an AuthError when the server refuses the token, at
 *   connect ("invalid_token") or later ("session_ended"); the client then waits for setAuthToken
 * @param options.onJoinError called for every refused join
 * @param options.onStatusChange called with "connecting" | "open" | "reconnecting" | "unauthorized" | "closed"
 * @param options.onRecoveryFailed called with a channel name when, after a reconnect, the messages
 *   missed on it could not be recovered (reload that channel's state)
 * @param options.backoff { initial, factor, maximum } in milliseconds, for reconnects
 */
export function startWebsockets(options = {}) {
  if (connection !== null) {
    console.warn("modelence-trio: startWebsockets was called again; the connection already exists");
    return connection;
  }
  if (options.token !== undefined) settings.token = options.token ?? undefined;
  settings.getToken = options.getToken;
  connection = new Connection(options);
  connection.open();
  return connection;
}

/** Close the connection for good (no reconnect); startWebsockets may be called again afterwards. */
export function stopWebsockets() {
  if (connection !== null) {
    connection.close();
    connection = null;
  }
}

/** Call a method `module.method` over HTTP; resolves with its data, rejects with MethodError
 * (`code` "unreachable" and `status` 0 when the server cannot be reached at all). */
export async function callMethod(name, args = {}) {
  let response;
  try {
    response = await fetch(`${settings.baseUrl}/api/_internal/method/${name}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ args, authToken: (await currentToken()) ?? null, clientInfo: clientInfo() }),
    });
  } catch (error) {
    throw new MethodError(`the server is unreachable (${error.message})`, 0, "unreachable");
  }
  if (!response.ok) {
    const text = await response.text();
    throw new MethodError(text || response.statusText, response.status, response.headers.get("X-Modelence-Error-Code"));
  }
  return (await response.json()).data;
}

function clientInfo() {
  if (typeof window === "undefined") return {};
  return {
    screenWidth: window.screen?.width,
    screenHeight: window.screen?.height,
    windowWidth: window.innerWidth,
    windowHeight: window.innerHeight,
    pixelRatio: window.devicePixelRatio,
  };
}

function requireConnection() {
  if (connection === null) throw new Error("modelence-trio: call startWebsockets first");
  return connection;
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

class Connection {
  constructor(options) {
    this.url = options.url ?? defaultUrl();
    this.categories = new Map((options.channels ?? []).map((c) => [c.category, c]));
    this.onJoinError = options.onJoinError;
    this.onAuthError = options.onAuthError;
    this.onStatusChange = options.onStatusChange;
    this.onRecoveryFailed = options.onRecoveryFailed;
    this.positions = new Map(); // channel name -> { offset, epoch }: the last message seen
    this.backoff = { initial: 500, factor: 2, maximum: 10000, ...options.backoff };
    this.pingInterval = options.pingInterval ?? 25000;
    this.pingTimeout = options.pingTimeout ?? 20000;
    this.joined = new Map(); // channel name -> ClientChannel: what to (re-)join
    this.members = new Map(); // channel name -> { count, truncated, keyed: Map | null }: presence
    this.pending = new Map(); // ref -> { resolve, reject }
    this.waitingForToken = null; // the AuthError of a refused token, until setAuthToken
    this.nextRef = 1;
    this.ws = null;
    this.ready = false; // welcome received on the current socket
    this.attempt = 0;
    this.stopped = false;
    this.timers = new Set();
    this.status = "closed";
  }

  setStatus(status) {
    if (status !== this.status) {
      this.status = status;
      this.onStatusChange?.(status);
    }
  }

  async open() {
    if (this.stopped || this.ws) return;
    this.setStatus(this.attempt === 0 ? "connecting" : "reconnecting");
    const url = new URL(this.url, typeof location === "undefined" ? undefined : location.href);
    const ws = { placeholder: true }; // holds the place while the token is fetched
    this.ws = ws;
    let token;
    try {
      token = await currentToken();
    } catch (error) {
      console.warn("modelence-trio: getToken failed", error);
      this.ws = null;
      this.retry();
      return;
    }
    if (this.ws !== ws || this.stopped) {
      if (this.ws === ws) this.ws = null;
      return; // closed meanwhile
    }
    if (token) url.searchParams.set("token", token);
    const socket = new WebSocket(url);
    this.ws = socket;
    socket.onmessage = (event) => this.receive(event.data);
    socket.onclose = (event) => this.lost(socket, event);
  }

  lost(ws, event) {
    if (ws !== this.ws) return;
    const wasReady = this.ready;
    // How the last connection that was up ended (failed attempts since do not count).
    if (wasReady) this.closedCleanly = event?.code === 1001;
    this.ws = null;
    this.ready = false;
    this.clearTimers();
    for (const { reject } of this.pending.values()) reject(new Error("connection lost"));
    this.pending.clear();
    if (this.stopped) {
      this.setStatus("closed");
      return;
    }
    if (event?.code === 4001) {
      // The token was refused (protocol.md: a browser learns it from this close code):
      // reconnecting with it would be refused again, so wait for setAuthToken.
      this.unauthorized(new AuthError(wasReady ? "session_ended" : "invalid_token", event.reason || "unauthorized"));
      return;
    }
    this.retry();
  }

  unauthorized(error) {
    this.waitingForToken = error;
    this.attempt = 0;
    this.setStatus("unauthorized");
    for (const name of [...(this.waiting?.keys() ?? [])]) this.settle(name, error);
    if (this.onAuthError) this.onAuthError(error);
    else console.warn("modelence-trio: the server refused the token", error);
  }

  tokenChanged() {
    if (this.stopped) return;
    if (this.waitingForToken) {
      this.waitingForToken = null;
      this.open();
    } else if (this.ready) {
      const ws = this.ws;
      this.attempt = 0;
      ws.close(1000, "a new token");
      this.lost(ws); // at once: the next connection carries the new token
    }
  }

  retry() {
    if (this.stopped) return;
    this.setStatus("reconnecting");
    const { initial, factor, maximum } = this.backoff;
    const delay = Math.min(maximum, initial * factor ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.later(() => this.open(), delay);
  }

  close() {
    this.stopped = true;
    this.clearTimers();
    this.ws?.close?.(1000, "client closed");
  }

  later(fn, ms) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  clearTimers() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }


  request(frame) {
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      this.send({ ...frame, ref });
    });
  }

  // A join made while the token is refused rejects at once with that AuthError; like the
  // channels joined before, it is joined once a new token connects (setAuthToken).
  join(channel, name, last) {
    this.categories.set(channel.category, this.categories.get(channel.category) ?? channel);
    if (!this.joined.has(name) && last) (this.lastWanted ??= new Map()).set(name, last);
    this.joined.set(name, channel);
    if (this.waitingForToken) return Promise.reject(this.waitingForToken);
    const settled = this.waitFor(name);
    if (this.ready) this.sendJoin(name);
    return settled;
  }

  // A join settles when the server answers it, on this connection or, if
  // this one drops first, on the next (which sends it again).
  waitFor(name) {
    return new Promise((resolve, reject) => {
      const waiters = (this.waiting ??= new Map());
      const list = waiters.get(name) ?? [];
      list.push({ resolve, reject });
      waiters.set(name, list);
    });
  }

  sendJoin(name) {
    const since = this.positions.get(name);
    const last = since ? undefined : this.lastWanted?.get(name);
    const frame = { type: "join", channel: name };
    if (since) frame.since = since;
    if (last) frame.last = last;
    this.request(frame).then(
      (joined) => {
        this.lastWanted?.delete(name);
        if (since && joined.recovered !== true && !this.nothingMissed(since, joined)) {
          console.warn(`modelence-trio: messages missed on ${name} could not be recovered`);
          this.onRecoveryFailed?.(name);
        }
        // A position right away, for a channel that gets no message before the next drop.
        if ((since === undefined || joined.recovered !== true) && joined.offset !== undefined) {
          this.positions.set(name, { offset: joined.offset, epoch: joined.epoch });
        }
        this.settle(name, null);
      },
      (error) => {
        if (error instanceof JoinError) this.settle(name, error);
      },
    );
  }

  // A server that closed us with 1001 (a graceful stop) had sent everything first; if the one we
  // reconnected to is a new one (another epoch) that has sent nothing yet (offset 0), nothing
  // was missed, though the old offsets cannot be recovered: no warning then.
  nothingMissed(since, joined) {
    return this.closedCleanly && joined.epoch !== undefined && joined.epoch !== since.epoch && joined.offset === 0;
  }

  settle(name, error) {
    const list = this.waiting?.get(name) ?? [];
    this.waiting?.delete(name);
    for (const waiter of list) (error ? waiter.reject(error) : waiter.resolve());
  }

  leave(name) {
    this.joined.delete(name);
    this.positions.delete(name);
    this.members.delete(name);
    this.lastWanted?.delete(name);
    this.settle(name, new Error(`left ${name} before it was joined`));
    if (!this.ready) return Promise.resolve();
    return this.request({ type: "leave", channel: name }).then(() => undefined);
  }

  publish(name, data) {
    if (!this.ready) return Promise.reject(new Error(`not connected: cannot publish to ${name}`));
    return this.request({ type: "message", channel: name, data }).then(() => undefined);
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      console.warn("modelence-trio: a frame that is not JSON", text);
      return;
    }
    switch (frame.type) {
      case "welcome":
        if (frame.protocol !== PROTOCOL) console.warn(`modelence-trio: server speaks protocol ${frame.protocol}`);
        this.ready = true;
        this.attempt = 0;
        this.setStatus("open");
        this.heartbeat();
        for (const name of this.joined.keys()) this.sendJoin(name);
        break;
      case "message": {
        if (frame.offset !== undefined && this.joined.has(frame.channel)) {
          this.positions.set(frame.channel, { offset: frame.offset, epoch: frame.epoch });
        }
        const category = frame.channel.slice(0, frame.channel.indexOf(":"));
        const channel = this.categories.get(category);
        if (channel) channel.onMessage(frame.data, { channel: frame.channel, id: frame.channel.slice(category.length + 1) });
        break;
      }
      case "join_error": {
        const error = new JoinError(frame.channel, frame.code, frame.error);
        const channel = this.joined.get(frame.channel);
        this.joined.delete(frame.channel);
        this.positions.delete(frame.channel);
        this.members.delete(frame.channel);
        this.lastWanted?.delete(frame.channel);
        this.reply(frame.ref, error);
        if (channel?.onJoinError) channel.onJoinError(error);
        if (this.onJoinError) this.onJoinError(error);
        if (!channel?.onJoinError && !this.onJoinError) console.warn("modelence-trio: join refused", error);
        break;
      }
      case "left":
        if (frame.ref === undefined) {
          // The server removed the subscription (access revoked): do not re-join it.
          this.joined.delete(frame.channel);
          this.positions.delete(frame.channel);
          this.members.delete(frame.channel);
          console.warn(`modelence-trio: left ${frame.channel}: ${frame.reason}`);
        } else {
          this.reply(frame.ref, null, frame);
        }
        break;
      case "presence_state": {
        const keyed = frame.members ? new Map(frame.members.map((m) => [m.key, m])) : null;
        this.members.set(frame.channel, { count: frame.count, truncated: frame.truncated === true, keyed });
        this.presenceChanged(frame.channel);
        this.reply(frame.ref, null, frame);
        break;
      }
      case "presence_diff": {
        const view = this.members.get(frame.channel);
        if (!view) break; // no state to apply it to
        view.count = frame.count;
        view.truncated ||= frame.truncated === true;
        if (view.keyed) {
          for (const member of frame.joins ?? []) view.keyed.set(member.key, member);
          for (const member of frame.leaves ?? []) view.keyed.delete(member.key);
        }
        this.presenceChanged(frame.channel);
        break;
      }
      case "error":
        if (!this.reply(frame.ref, new Error(`${frame.code}: ${frame.error}`))) {
          console.warn("modelence-trio: server error", frame);
        }
        break;
      default:
        this.reply(frame.ref, null, frame);
    }
  }

  presenceOf(name) {
    const view = this.members.get(name);
    if (!view) return { count: 0, members: [], truncated: false };
    return { count: view.count, members: view.keyed ? [...view.keyed.values()] : null, truncated: view.truncated };
  }

  presenceChanged(name) {
    const category = name.slice(0, name.indexOf(":"));
    const channel = this.categories.get(category);
    if (channel?.onPresence) channel.onPresence(this.presenceOf(name), { channel: name, id: name.slice(category.length + 1) });
  }

  reply(ref, error, frame) {
    const pending = ref === undefined ? undefined : this.pending.get(ref);
    if (pending === undefined) return false;
    this.pending.delete(ref);
    error ? pending.reject(error) : pending.resolve(frame);
    return true;
  }

  // Browsers answer the server's pings but cannot see them: our own pings
  // tell a dead connection (sleeping laptop, dropped network) from a quiet one.
  heartbeat() {
    const ws = this.ws;
    this.later(() => {
      if (ws !== this.ws || !this.ready) return;
      const timeout = this.later(() => {
        ws.close(4000, "heartbeat timeout");
        this.lost(ws); // at once: a dead network may never complete the close
      }, this.pingTimeout);
      this.request({ type: "ping" }).then(
        () => {
          clearTimeout(timeout);
          this.timers.delete(timeout);
          this.heartbeat();
        },
        () => {},
      );
    }, this.pingInterval);
  }
}
