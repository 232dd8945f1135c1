// Types for modelence.js, the modelence-trio browser client (protocol v1, see protocol.md).

/**
 * The app's channel categories and their payload types: empty here, filled in by the file
 * `modelence-trio typescript module:app` writes (module augmentation). Once filled, only
 * those categories are accepted.
 */
export interface Channels {}

/** The app's methods, `"module.method": { args; result }`: filled in the same way. */
export interface Methods {}

/** A category the app serves (any string until `Channels` is filled in). */
export type ChannelCategory = [keyof Channels] extends [never] ? string : keyof Channels & string;
/** A method the app has (any string until `Methods` is filled in). */
export type MethodName = [keyof Methods] extends [never] ? string : keyof Methods & string;
export type MethodArgs<N> = N extends keyof Methods ? (Methods[N] extends { args: infer A } ? A : never) : Record<string, unknown>;
export type MethodResult<N> = N extends keyof Methods ? (Methods[N] extends { result: infer R } ? R : never) : unknown;

/** "unauthorized": the server refused the token; the client waits for `setAuthToken`. */
export type ConnectionStatus = "connecting" | "open" | "reconnecting" | "unauthorized" | "closed";

/** Where a message came from: the full channel name and its id part. */
export interface MessageSource {
  channel: string;
  id: string;
}

/** A call to a method failed: `status` is the HTTP status, `code` the X-Modelence-Error-Code header
 * (`status` 0 and `code` "unreachable" when the server could not be reached at all). */
export class MethodError extends Error {
  readonly status: number;
  readonly code: string | null;
  constructor(message: string, status: number, code: string | null);
}

/** The server refused the session token: `code` is "invalid_token" (at connect) or "session_ended"
 * (while connected). Pending joins reject with it; the client reconnects once `setAuthToken` is called. */
export class AuthError extends Error {
  readonly code: "invalid_token" | "session_ended";
  constructor(code: "invalid_token" | "session_ended", message: string);
}

/** The server refused a join; `code` is one of protocol.md's error codes (e.g. "access_denied"). */
export class JoinError extends Error {
  readonly channel: string;
  readonly code: string;
  constructor(channel: string, code: string, message: string);
}

/** One member of a presence channel: a user (`key`: its id) or an anonymous connection. */
export interface PresenceMember {
  key: string;
  /** Its open connections to the channel, on every instance. */
  connections: number;
  /** What the server's presence meta hook said of it (never what a client claims). */
  meta: unknown;
}

/** Who is in a presence channel, as last heard from the server. */
export interface Presence {
  count: number;
  /** null on a counts-only channel. */
  members: PresenceMember[] | null;
  /** The server lists fewer members than `count` (a large channel). */
  truncated: boolean;
}

export interface ClientChannelOptions {
  /** Called when a join of this category is refused. */
  onJoinError?: (error: JoinError) => void;
  /** On a category with presence: called after each change of who is in one of its channels. */
  onPresence?: (presence: Presence, source: MessageSource) => void;
}

export class ClientChannel<T = unknown> {
  readonly category: string;
  onMessage: (data: T, source: MessageSource) => void;
  onJoinError?: (error: JoinError) => void;
  onPresence?: (presence: Presence, source: MessageSource) => void;
  constructor(category: ChannelCategory, onMessage: (data: T, source: MessageSource) => void, options?: ClientChannelOptions);
  /** Join `${category}:${id}`; resolves once joined, rejects with JoinError if refused.
   * Re-joined automatically after every reconnect until left. */
  joinChannel(id: string, options?: { last?: number }): Promise<void>;
  /** Leave `${category}:${id}`; resolves at once if not connected. */
  leaveChannel(id: string): Promise<void>;
  /** Publish into the joined channel `${category}:${id}`; resolves once the server handled it,
   * rejects with its error ("not_joined: ...", "publish_rejected: ...") otherwise. */
  publishToChannel(id: string, data: T): Promise<void>;
  /** Who is in the joined presence channel `${category}:${id}`, as last heard (no round trip). */
  presence(id: string): Presence;
  /** Ask the server who is in the joined channel now. */
  fetchPresence(id: string): Promise<Presence>;
}

export interface Backoff {
  /** Milliseconds before the first reconnect attempt (default 500). */
  initial?: number;
  /** Growth of the delay per failed attempt (default 2). */
  factor?: number;
  /** Longest delay in milliseconds (default 10000). Each delay is jittered down by up to half. */
  maximum?: number;
}

export interface WebsocketsOptions {
  channels?: ClientChannel<any>[];
  /** Default: ws(s)://<this page's host>/ws */
  url?: string;
  /** Session token, sent as the `token` query parameter (and by callMethod). */
  token?: string | null;
  /** Called before every (re)connect and method call for the token to use (refresh it here). */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** The server refused the token; the client waits for `setAuthToken` before connecting again. */
  onAuthError?: (error: AuthError) => void;
  onJoinError?: (error: JoinError) => void;
  onStatusChange?: (status: ConnectionStatus) => void;
  /** After a reconnect, the messages missed on this channel could not be recovered: reload its state. */
  onRecoveryFailed?: (channel: string) => void;
  backoff?: Backoff;
  /** Milliseconds between client pings (default 25000) and to wait for the pong (default 20000). */
  pingInterval?: number;
  pingTimeout?: number;
}

export interface Websockets {
  readonly status: ConnectionStatus;
}

/** Connect once; a second call warns and returns the existing connection. */
export function startWebsockets(options?: WebsocketsOptions): Websockets;
/** Close the connection for good (no reconnect). */
export function stopWebsockets(): void;
/** Set (or clear) the session token used by the WebSocket and callMethod. */
export function setAuthToken(token: string | null | undefined): void;
/** Call `module.method`; resolves with the method's data, rejects with MethodError. With the
 * app's types (`modelence-trio typescript`), the name, the arguments and the result are checked. */
export function callMethod<N extends MethodName>(
  name: N,
  ...args: {} extends MethodArgs<N> ? [args?: MethodArgs<N>] : [args: MethodArgs<N>]
): Promise<MethodResult<N>>;
