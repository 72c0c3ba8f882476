// meshroom.js: the browser client for meshroom, a WebRTC signaling server for
// peer-to-peer mesh meetings. A dependency-free ES module; no build step.
//
//   import { MeshroomClient } from "/meshroom.js";
//   const client = new MeshroomClient({ url: "ws://127.0.0.1:8080/meetings", token, localStream });
//   client.on("stream", ({ empId, stream }) => { video.srcObject = stream; });
//   await client.join();
//
// The client keeps one RTCPeerConnection per remote peer (a full mesh) and
// negotiates each with the "perfect negotiation" pattern, so simultaneous offers
// never deadlock: of every pair, the peer whose empId sorts first is polite (it
// rolls back its own offer on a collision); the other is impolite (it ignores
// the colliding offer). ICE candidates that arrive before the remote description
// are queued until it is set. See docs/js-client.md.

/** WebSocket close codes meshroom sends (docs/protocol.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  AUTH_REQUIRED: 4000,
  AUTH_FAILED: 4001,
  AUTH_TIMEOUT: 4002,
  MEETING_UNAVAILABLE: 4003,
  BANNED: 4004,
  KICKED: 4005,
  MEETING_ENDED: 4006,
  REPLACED: 4007,
  DUPLICATE_SESSION: 4008,
  SLOW_CONSUMER: 4009,
  HEARTBEAT_TIMEOUT: 4010,
  ROOM_FULL: 4011,
  RATE_LIMITED: 4012,
  RESUMED_ELSEWHERE: 4013,
});

/** The `data.code` of an error frame, and of a MeshroomError (docs/protocol.md §6). */
export const ErrorCode = Object.freeze({
  BAD_JSON: "BAD_JSON",
  BAD_FRAME: "BAD_FRAME",
  UNKNOWN_EVENT: "UNKNOWN_EVENT",
  INVALID_FIELD: "INVALID_FIELD",
  FRAME_TOO_LARGE: "FRAME_TOO_LARGE",
  BINARY_NOT_SUPPORTED: "BINARY_NOT_SUPPORTED",
  RATE_LIMITED: "RATE_LIMITED",
  TARGET_NOT_FOUND: "TARGET_NOT_FOUND",
  FORBIDDEN: "FORBIDDEN",
  CANNOT_TARGET_SELF: "CANNOT_TARGET_SELF",
  INVALID_TRANSITION: "INVALID_TRANSITION",
  ALREADY_AUTHENTICATED: "ALREADY_AUTHENTICATED",
  STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
  AUTH_REQUIRED: "AUTH_REQUIRED",
  AUTH_FAILED: "AUTH_FAILED",
  AUTH_TIMEOUT: "AUTH_TIMEOUT",
  MEETING_NOT_FOUND: "MEETING_NOT_FOUND",
  MEETING_NOT_LIVE: "MEETING_NOT_LIVE",
  MEETING_ENDED: "MEETING_ENDED",
  BANNED: "BANNED",
  KICKED: "KICKED",
  DUPLICATE_SESSION: "DUPLICATE_SESSION",
  ROOM_FULL: "ROOM_FULL",
  SHUTTING_DOWN: "SHUTTING_DOWN",
  CLUSTER_UNAVAILABLE: "CLUSTER_UNAVAILABLE",
  INTERNAL_ERROR: "INTERNAL_ERROR",
});

/** Why a session ended for good: the `reason` of the "closed" event. */
export const EndReason = Object.freeze({
  LEFT: "left",
  KICKED: "kicked",
  BANNED: "banned",
  MEETING_ENDED: "meeting-ended",
  REPLACED: "replaced",
  ROOM_FULL: "room-full",
  AUTH_FAILED: "auth-failed",
  MEETING_NOT_FOUND: "meeting-not-found",
  MEETING_NOT_LIVE: "meeting-not-live",
  DUPLICATE_SESSION: "duplicate-session",
  CONNECTION_FAILED: "connection-failed",
  CONNECTION_LOST: "connection-lost",
});

/** Roles, and what each may do to whom (mirrors meshroom/roles.py). */
export const Role = Object.freeze({ HOST: "HOST", COHOST: "COHOST", PARTICIPANT: "PARTICIPANT" });

const TARGETED = {
  kick: { HOST: ["COHOST", "PARTICIPANT"], COHOST: ["PARTICIPANT"] },
  ban: { HOST: ["COHOST", "PARTICIPANT"], COHOST: ["PARTICIPANT"] },
  promote: { HOST: ["PARTICIPANT"] },
  demote: { HOST: ["COHOST"] },
};
const UNTARGETED = { unban: ["HOST", "COHOST"], end: ["HOST"] };

/** Whether a peer with role `actor` may perform `action` (on a peer whose role is `target`). */
export function may(actor, action, target) {
  if (action in UNTARGETED) return UNTARGETED[action].includes(actor);
  const rule = TARGETED[action] || {};
  if (target === undefined) return actor in rule;
  return (rule[actor] || []).includes(target);
}

/** The server answered a request with an error frame, or refused the join. */
export class MeshroomError extends Error {
  constructor(code, message, data = {}) {
    super(`${code}: ${message}`);
    this.name = "MeshroomError";
    this.code = code;
    this.data = data;
  }
}

/** A tiny event emitter: on/off/once; on() returns a function that unsubscribes. */
export class Emitter {
  #handlers = new Map();

  on(type, handler) {
    if (!this.#handlers.has(type)) this.#handlers.set(type, new Set());
    this.#handlers.get(type).add(handler);
    return () => this.off(type, handler);
  }

  off(type, handler) {
    this.#handlers.get(type)?.delete(handler);
  }

  once(type, handler) {
    const off = this.on(type, (detail) => {
      off();
      handler(detail);
    });
    return off;
  }

  emit(type, detail) {
    for (const handler of [...(this.#handlers.get(type) || [])]) {
      try {
        handler(detail);
      } catch (error) {
        console.error(`meshroom: a "${type}" handler threw`, error);
      }
    }
    if (type !== "*") {
      for (const handler of [...(this.#handlers.get("*") || [])]) {
        try {
          handler({ type, detail });
        } catch (error) {
          console.error('meshroom: a "*" handler threw', error);
        }
      }
    }
  }
}

// Close codes that end a session for good, whatever error frame came first.
const FINAL_CLOSES = new Map([
  [CloseCode.AUTH_REQUIRED, EndReason.AUTH_FAILED],
  [CloseCode.AUTH_FAILED, EndReason.AUTH_FAILED],
  [CloseCode.BANNED, EndReason.BANNED],
  [CloseCode.KICKED, EndReason.KICKED],
  [CloseCode.MEETING_ENDED, EndReason.MEETING_ENDED],
  [CloseCode.REPLACED, EndReason.REPLACED],
  [CloseCode.ROOM_FULL, EndReason.ROOM_FULL],
  [CloseCode.RESUMED_ELSEWHERE, EndReason.REPLACED],
]);

// session:closed reasons after which reconnecting would be wrong (others are transient:
// server-shutdown, slow-consumer, ...).
const FINAL_NOTICES = new Set([
  EndReason.KICKED,
  EndReason.BANNED,
  EndReason.MEETING_ENDED,
  EndReason.REPLACED,
]);

// Error codes (of the error frame sent just before a refusal's close) that are final.
const FINAL_ERRORS = new Map([
  ["AUTH_FAILED", EndReason.AUTH_FAILED],
  ["AUTH_REQUIRED", EndReason.AUTH_FAILED],
  ["MEETING_NOT_FOUND", EndReason.MEETING_NOT_FOUND],
  ["MEETING_NOT_LIVE", EndReason.MEETING_NOT_LIVE],
  ["MEETING_ENDED", EndReason.MEETING_ENDED],
  ["BANNED", EndReason.BANNED],
  ["KICKED", EndReason.KICKED],
  ["ROOM_FULL", EndReason.ROOM_FULL],
]);

// Acknowledge received frames every this many (and with every heartbeat).
const ACK_EVERY = 128;

const DEFAULTS = {
  rtcConfig: {},
  reconnect: { initialDelay: 500, maxDelay: 10000, maxAttempts: 30 },
  // Socket.IO's ping period and the server's default heartbeat interval: the server
  // seldom pings a client that pings this often, so an idle client costs it one round
  // trip per period (most of what a server of idle peers does).
  heartbeatInterval: 25000,
  heartbeatTimeout: 10000,
  requestTimeout: 15000,
};

/**
 * One participant's connection to a meeting: signaling plus the mesh of peer connections.
 *
 * Events (`client.on(name, handler)`; each handler gets one object):
 *   joined        {self, meeting, peers, iceServers, rejoin}  every (re)join's snapshot
 *   peer-joined   {peer, snapshot}       a remote peer arrived (snapshot: was there when we joined)
 *   peer-left     {empId, reason}        a remote peer left (reason "reconnecting" on our own drop)
 *   stream        {empId, stream, track} media arrived from a peer (one MediaStream per peer)
 *   peer-state    {empId, state}         a peer connection's connectionState changed
 *   presence      {empId, presence}      someone's muted / cameraOff / handRaised changed
 *   role-changed  {empId, role, previousRole, reason, by}
 *   reconnecting  {attempt, delay, code, resuming}  the signaling connection dropped; retrying
 *   reconnected   {resumed}              back in the room after a drop (resumed: same session,
 *                                        peer connections kept; else rejoined and rebuilt)
 *   closed        {reason, code, message, by}  the session is over for good (see EndReason)
 *   error         {error}                a request failed or negotiation threw
 *   event         {name, data}           every frame the server pushes, unchanged
 */
export class MeshroomClient extends Emitter {
  /**
   * @param {object} options
   * @param {string} options.url      the signaling WebSocket URL (ws[s]://host/meetings)
   * @param {string} options.token    the meeting access token
   * @param {MediaStream} [options.localStream]  camera/microphone to send (may be set later)
   * @param {RTCConfiguration} [options.rtcConfig]  merged under the snapshot's iceServers
   * @param {object} [options.reconnect]  {initialDelay, maxDelay, maxAttempts}; false = never
   */
  constructor(options) {
    super();
    if (!options?.url || !options?.token) throw new TypeError("MeshroomClient needs url and token");
    this.url = options.url;
    this.token = options.token;
    this.localStream = options.localStream || null;
    this.rtcConfig = { ...DEFAULTS.rtcConfig, ...(options.rtcConfig || {}) };
    this.reconnectOptions =
      options.reconnect === false ? null : { ...DEFAULTS.reconnect, ...(options.reconnect || {}) };
    this.heartbeatInterval = options.heartbeatInterval ?? DEFAULTS.heartbeatInterval;
    this.heartbeatTimeout = options.heartbeatTimeout ?? DEFAULTS.heartbeatTimeout;
    this.requestTimeout = options.requestTimeout ?? DEFAULTS.requestTimeout;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._RTCPeerConnection = options.RTCPeerConnection || globalThis.RTCPeerConnection;

    /** "idle" | "connecting" | "joined" | "reconnecting" | "closed" */
    this.state = "idle";
    this.self = null; // {empId, displayName, role, presence}
    this.meeting = null; // {id, title, roomCode, hostEmpId}
    this.iceServers = [];
    /** @type {Map<string, {empId, displayName, role, presence}>} */
    this.peers = new Map();
    /** @type {Map<string, PeerLink>} */
    this.links = new Map();
    this.presence = { muted: false, cameraOff: false, handRaised: false };

    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._joinedOnce = false;
    this._joinWaiter = null;
    this._attempt = 0;
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._notice = null; // the last session:closed / meeting:ended before a close
    this._lastError = null; // the last error frame (a refusal's reason)
    this._resumeToken = null; // from the snapshot, when the server keeps places for a resume
    // The seq of the last frame received: a resume asks for exactly what follows it,
    // and acknowledging it now and then lets the server forget what we have.
    this._lastSeq = null;
    this._unacknowledged = 0;
    this._resuming = false; // reconnecting with peer connections kept, to resume the session
    this._heldSignals = []; // our signals while resuming, sent once the session is back
    this._shutdownHint = null; // server:shutdown's reconnectAfterMs
    this._leaving = false;
    this._onOnline = () => {
      if (this.state === "reconnecting") this._reconnectNow();
    };
  }

  get empId() {
    return this.self?.empId ?? null;
  }

  get role() {
    return this.self?.role ?? null;
  }

  /** Whether this participant may perform `action` (on `targetEmpId`, when it names one). */
  may(action, targetEmpId) {
    if (!this.self) return false;
    if (targetEmpId === undefined) return may(this.self.role, action);
    const target = this.peers.get(targetEmpId);
    return !!target && may(this.self.role, action, target.role);
  }

  /** Connect and join. Resolves with the snapshot; rejects with a MeshroomError if refused. */
  join() {
    if (this.state !== "idle") return Promise.reject(new Error(`cannot join: client is ${this.state}`));
    globalThis.addEventListener?.("online", this._onOnline);
    return new Promise((resolve, reject) => {
      this._joinWaiter = { resolve, reject };
      this._open("connecting");
    });
  }

  /**
   * Leave the meeting and close every peer connection. With `{wait: false}` (for
   * "pagehide"), say so without waiting for the server's answer.
   */
  async leave({ wait = true } = {}) {
    if (this.state === "closed") return;
    const ws = this._ws;
    this._leaving = true;
    if (ws && ws.readyState === 1) {
      if (!wait) {
        this._send({ event: "peer:leave", data: {} });
      } else {
        try {
          await this.request("peer:leave", {}, 2000);
        } catch {
          // leaving anyway
        }
      }
    }
    this._finish(EndReason.LEFT, CloseCode.NORMAL, "left the meeting");
  }

  // Media and presence

  /** Send this stream (or none) to every peer; replaces tracks without renegotiating if it can. */
  setLocalStream(stream) {
    this.localStream = stream || null;
    this._applyTrackState();
    for (const link of this.links.values()) link.attachLocalMedia();
  }

  /** Update presence: any of {muted, cameraOff, handRaised}. Also mutes/unmutes local tracks. */
  async setPresence(changes) {
    Object.assign(this.presence, changes);
    this._applyTrackState();
    if (this.state !== "joined") return this.presence; // sent after the (re)join
    const answer = await this.request("presence:update", changes);
    if (this.self) this.self.presence = { ...answer.presence };
    return answer.presence;
  }

  setMuted(muted) {
    return this.setPresence({ muted: !!muted });
  }

  setCameraOff(cameraOff) {
    return this.setPresence({ cameraOff: !!cameraOff });
  }

  setHandRaised(handRaised) {
    return this.setPresence({ handRaised: !!handRaised });
  }

  // Host controls (each resolves with the server's ack, or rejects with a MeshroomError)

  kick(empId) {
    return this.request("host:kick", { targetEmpId: empId });
  }

  ban(empId, reason) {
    return this.request("host:ban", reason ? { targetEmpId: empId, reason } : { targetEmpId: empId });
  }

  unban(empId) {
    return this.request("host:unban", { targetEmpId: empId });
  }

  promote(empId) {
    return this.request("host:promote", { targetEmpId: empId });
  }

  demote(empId) {
    return this.request("host:demote", { targetEmpId: empId });
  }

  endMeeting() {
    return this.request("host:end", {});
  }

  /** The RTCPeerConnection to one peer (for getStats, data channels, ...), or undefined. */
  peerConnection(empId) {
    return this.links.get(empId)?.pc;
  }

  /** Send a request and wait for its ack. */
  request(event, data = {}, timeout = this.requestTimeout) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1 || this.state !== "joined") {
      return Promise.reject(new MeshroomError("NOT_CONNECTED", `not connected (${this.state})`));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new MeshroomError("TIMEOUT", `no answer to ${event} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer, event });
      this._send({ event, id, data });
    });
  }

  // Signaling connection

  _open(state) {
    this.state = state;
    this._notice = null;
    this._lastError = null;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (error) {
      this._onSocketGone(ws, 1006, String(error));
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    ws.onopen = () => {
      const data = { meetingAccessToken: this.token };
      // Seam for a server-side resume credential: sent back if the snapshot carried one.
      if (this._resumeToken) {
        data.resumeToken = this._resumeToken;
        if (this._lastSeq !== null) data.lastSeq = this._lastSeq;
      }
      this._send({ event: "auth", id: 0, data });
    };
    ws.onmessage = (message) => this._onFrame(message.data);
    ws.onclose = (event) => this._onSocketGone(ws, event.code, event.reason);
    ws.onerror = () => {}; // always followed by close
  }

  _send(frame) {
    const ws = this._ws;
    if (ws && ws.readyState === 1 && this.state === "joined") {
      ws.send(JSON.stringify(frame));
    } else if (ws && ws.readyState === 1 && frame.event === "auth") {
      ws.send(JSON.stringify(frame));
    } else if (this._resuming && frame.event.startsWith("signal:") && this._heldSignals.length < 1000) {
      this._heldSignals.push(frame); // the session is kept: deliver it when it is back
    }
  }

  _signal(event, targetEmpId, payload) {
    this._send({ event, data: { targetEmpId, ...payload } });
  }

  _onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(typeof raw === "string" ? raw : new TextDecoder().decode(raw));
    } catch {
      return;
    }
    const { event, id } = frame;
    const data = frame.data || {};
    if (Number.isInteger(frame.seq)) {
      // A new session numbers from 1 again; within one, a frame seen before is dropped.
      if (event !== "room:joined" && this._lastSeq !== null && frame.seq <= this._lastSeq) return;
      this._lastSeq = frame.seq;
      if (++this._unacknowledged >= ACK_EVERY) this._acknowledge();
    }
    if ((event === "ack" || event === "error") && id !== undefined && this._pending.has(id)) {
      const waiter = this._pending.get(id);
      this._pending.delete(id);
      clearTimeout(waiter.timer);
      if (event === "ack") waiter.resolve(data);
      else waiter.reject(new MeshroomError(data.code, data.message, data));
      return;
    }
    this.emit("event", { name: event, data });
    switch (event) {
      case "room:joined":
        return this._onJoined(data);
      case "room:resumed":
        return this._onResumed(data);
      case "server:shutdown":
        this._shutdownHint = typeof data.reconnectAfterMs === "number" ? data.reconnectAfterMs : null;
        return;
      case "peer:joined":
        return this._onPeerJoined(data);
      case "peer:left":
        return this._onPeerLeft(data.empId, data.reason);
      case "signal:offer":
        return this._link(data.fromEmpId)?.receiveDescription(data.offer);
      case "signal:answer":
        return this._link(data.fromEmpId)?.receiveDescription(data.answer);
      case "signal:ice":
        return this._link(data.fromEmpId)?.receiveCandidate(data.candidate);
      case "presence:updated":
        return this._onPresence(data.empId, data.presence);
      case "role:changed":
        return this._onRoleChanged(data);
      case "meeting:ended":
        this._notice = { reason: EndReason.MEETING_ENDED, by: data.by ?? null };
        return;
      case "session:closed":
        this._notice = { reason: data.reason, by: data.by ?? null, message: data.message };
        return;
      case "error":
        this._lastError = data;
        if (this.state === "joined") {
          this.emit("error", { error: new MeshroomError(data.code, data.message, data) });
        }
        return;
      default:
        return;
    }
  }

  _onJoined(snapshot) {
    const rejoin = this._joinedOnce;
    this._joinedOnce = true;
    this._attempt = 0;
    this.state = "joined";
    this.self = { ...snapshot.self };
    this.meeting = { ...snapshot.meeting };
    this.iceServers = snapshot.iceServers || [];
    this._resumeToken = typeof snapshot.resumeToken === "string" ? snapshot.resumeToken : null;
    this._shutdownHint = null;
    // A fresh session (a resume, if tried, was refused): links kept for it are useless
    // now, and the others rebuild theirs with us as a newcomer.
    this._resuming = false;
    this._heldSignals = [];
    this._dropPeers("reconnecting");
    for (const peer of snapshot.peers || []) this.peers.set(peer.empId, { ...peer });
    this._startHeartbeat();
    this.emit("joined", { ...snapshot, rejoin });
    if (rejoin) this.emit("reconnected", { resumed: false });
    for (const peer of this.peers.values()) {
      this.emit("peer-joined", { peer, snapshot: true });
      // We are the newcomer: we open each link and make the first offer.
      this._createLink(peer.empId, true);
    }
    // A fresh session starts with default presence; restore ours.
    const stale = Object.keys(this.presence).filter(
      (key) => this.presence[key] !== this.self.presence?.[key],
    );
    if (stale.length) {
      const changes = Object.fromEntries(stale.map((key) => [key, this.presence[key]]));
      this.request("presence:update", changes)
        .then((answer) => {
          if (this.self) this.self.presence = { ...answer.presence };
        })
        .catch((error) => this.emit("error", { error }));
    }
    if (this._joinWaiter) {
      this._joinWaiter.resolve(snapshot);
      this._joinWaiter = null;
    }
  }

  /** Our session was kept while we were away: peers and links stay; what was queued follows. */
  _onResumed(snapshot) {
    this._attempt = 0;
    this.state = "joined";
    this._resuming = false;
    this.self = { ...snapshot.self };
    this.meeting = { ...snapshot.meeting };
    this.iceServers = snapshot.iceServers || this.iceServers;
    this._resumeToken = typeof snapshot.resumeToken === "string" ? snapshot.resumeToken : null;
    // Membership changes while we were away arrive next, as the queued peer:joined and
    // peer:left; only what we already know is refreshed here.
    for (const peer of snapshot.peers || []) {
      const known = this.peers.get(peer.empId);
      if (known) Object.assign(known, { role: peer.role, presence: { ...peer.presence } });
    }
    const held = this._heldSignals;
    this._heldSignals = [];
    for (const frame of held) this._send(frame);
    this._startHeartbeat();
    this.emit("reconnected", { resumed: true });
  }

  _onPeerJoined(peer) {
    // Someone we still list (their old connection was replaced): drop the stale link first.
    if (this.peers.has(peer.empId)) this._onPeerLeft(peer.empId, "replaced");
    this.peers.set(peer.empId, { ...peer });
    this.emit("peer-joined", { peer: { ...peer }, snapshot: false });
    // They are the newcomer and will offer; our side waits for that offer.
    this._createLink(peer.empId, false);
  }

  _onPeerLeft(empId, reason) {
    const link = this.links.get(empId);
    if (link) {
      this.links.delete(empId);
      link.close();
    }
    if (this.peers.delete(empId)) this.emit("peer-left", { empId, reason });
  }

  _onPresence(empId, presence) {
    const peer = empId === this.empId ? this.self : this.peers.get(empId);
    if (peer) peer.presence = { ...presence };
    this.emit("presence", { empId, presence: { ...presence } });
  }

  _onRoleChanged(change) {
    const peer = change.empId === this.empId ? this.self : this.peers.get(change.empId);
    if (peer) peer.role = change.role;
    this.emit("role-changed", { ...change });
  }

  _createLink(empId, initiator) {
    const link = new PeerLink(this, empId, initiator);
    this.links.set(empId, link);
    return link;
  }

  _link(empId) {
    if (!empId || empId === this.empId) return undefined;
    // A signal from a peer we have no link for (never expected: peer:joined comes first).
    return this.links.get(empId) || (this.peers.has(empId) ? this._createLink(empId, false) : undefined);
  }

  /** Close every link and forget every peer, telling listeners each one is gone. */
  _dropPeers(reason) {
    for (const link of this.links.values()) link.close();
    this.links.clear();
    const gone = [...this.peers.keys()];
    this.peers.clear();
    for (const empId of gone) this.emit("peer-left", { empId, reason });
  }

  _applyTrackState() {
    if (!this.localStream) return;
    for (const track of this.localStream.getAudioTracks()) track.enabled = !this.presence.muted;
    for (const track of this.localStream.getVideoTracks()) track.enabled = !this.presence.cameraOff;
  }

  /** Tell the server the last frame we have (a ping without id: it gets no answer). */
  _acknowledge() {
    this._unacknowledged = 0;
    if (this._lastSeq !== null) this._send({ event: "ping", data: { lastSeq: this._lastSeq } });
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    if (!this.heartbeatInterval) return;
    const ws = this._ws;
    this._heartbeatTimer = setInterval(() => {
      if (this._ws !== ws) return;
      const data = this._lastSeq !== null ? { lastSeq: this._lastSeq } : {};
      this._unacknowledged = 0;
      this.request("ping", data, this.heartbeatTimeout).catch((error) => {
        // No answer: the connection is dead even if the browser has not noticed.
        if (this._ws === ws && error.code === "TIMEOUT") this._drop(ws, 1006, "heartbeat timeout");
      });
    }, this.heartbeatInterval);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  /** Abandon a socket now (its close event may come much later, or never). */
  _drop(ws, code, reason) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(3000, reason);
    } catch {
      // already closing
    }
    this._onSocketGone(ws, code, reason);
  }

  _onSocketGone(ws, code, reason) {
    if (ws && this._ws !== ws) return;
    this._ws = null;
    this._stopHeartbeat();
    for (const waiter of this._pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new MeshroomError("NOT_CONNECTED", `connection closed (${code})`));
    }
    this._pending.clear();
    if (this.state === "closed") return;

    const notice = this._notice;
    const error = this._lastError;
    let final = notice && FINAL_NOTICES.has(notice.reason) ? notice.reason : null;
    if (this._leaving) final = EndReason.LEFT;
    final = final || FINAL_CLOSES.get(code) || (error && FINAL_ERRORS.get(error.code)) || null;
    if (!final && code === CloseCode.MEETING_UNAVAILABLE) final = EndReason.MEETING_NOT_FOUND;
    if (!final && code === CloseCode.DUPLICATE_SESSION && !this._joinedOnce) {
      final = EndReason.DUPLICATE_SESSION; // on a reconnect our old session may linger: retry
    }
    if (!final && !this._joinedOnce) final = EndReason.CONNECTION_FAILED;
    if (!final && !this.reconnectOptions) final = EndReason.CONNECTION_LOST;
    if (final) {
      const message = notice?.message || error?.message || reason || "";
      this._finish(final, code, message, notice?.by ?? null, error);
      return;
    }
    this._scheduleReconnect(code);
  }

  _scheduleReconnect(code) {
    const options = this.reconnectOptions;
    if (this.state !== "reconnecting") {
      this.state = "reconnecting";
      // With a resume credential (and a server that is not going away) our place is
      // kept for a while: keep the peer connections too, media may well still flow.
      // Otherwise everything is rebuilt once we are back.
      this._resuming = !!this._resumeToken && this._shutdownHint === null;
      if (!this._resuming) {
        this._resumeToken = null;
        this._heldSignals = [];
        this._dropPeers("reconnecting");
      }
    }
    this._attempt += 1;
    if (this._attempt > options.maxAttempts) {
      this._finish(EndReason.CONNECTION_LOST, code, "could not reconnect");
      return;
    }
    const base = Math.min(options.maxDelay, options.initialDelay * 2 ** (this._attempt - 1));
    let delay = Math.round(base / 2 + (Math.random() * base) / 2);
    if (this._attempt === 1 && this._shutdownHint !== null) delay = this._shutdownHint;
    this.emit("reconnecting", { attempt: this._attempt, delay, code, resuming: this._resuming });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._open("reconnecting");
    }, delay);
  }

  _reconnectNow() {
    if (this._reconnectTimer === null) return;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._open("reconnecting");
  }

  _finish(reason, code, message, by = null, error = null) {
    if (this.state === "closed") return;
    this.state = "closed";
    this._resuming = false;
    this._heldSignals = [];
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._stopHeartbeat();
    globalThis.removeEventListener?.("online", this._onOnline);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, message.slice(0, 100));
      } catch {
        // already closed
      }
    }
    this._dropPeers(reason);
    const detail = { reason, code, message, by };
    if (this._joinWaiter) {
      const failure = new MeshroomError(error?.code || reason, message || reason, detail);
      this._joinWaiter.reject(failure);
      this._joinWaiter = null;
    }
    this.emit("closed", detail);
  }
}

/** The link to one remote peer: an RTCPeerConnection negotiated the perfect way. */
class PeerLink {
  constructor(client, empId, initiator) {
    this.client = client;
    this.empId = empId;
    // Deterministic and agreed by both ends without a message.
    this.polite = client.empId < empId;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.closed = false;
    this.pendingCandidates = [];
    this.queue = Promise.resolve(); // signals from this peer are handled one at a time
    this.stream = new MediaStream();
    const iceServers = client.iceServers.length ? client.iceServers : client.rtcConfig.iceServers;
    const pc = (this.pc = new client._RTCPeerConnection({ ...client.rtcConfig, iceServers }));

    pc.onicecandidate = ({ candidate }) => {
      if (this.closed) return;
      client._signal("signal:ice", empId, { candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ track }) => {
      if (this.closed) return;
      // One stream per peer, whatever stream ids the remote end's SDP carries.
      if (!this.stream.getTracks().includes(track)) this.stream.addTrack(track);
      this._emitStream(track);
    };
    pc.onnegotiationneeded = async () => {
      if (this.closed) return;
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        if (!this.closed) client._signal("signal:offer", empId, { offer: pc.localDescription.toJSON() });
      } catch (error) {
        this._failed(error);
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onconnectionstatechange = () => {
      if (this.closed) return;
      client.emit("peer-state", { empId, state: pc.connectionState });
      // Recover from a network change; the impolite end restarts to avoid a second collision.
      if (pc.connectionState === "failed" && !this.polite) pc.restartIce?.();
    };

    if (initiator) this.attachLocalMedia(true);
  }

  _emitStream(track) {
    if (!this.closed) this.client.emit("stream", { empId: this.empId, stream: this.stream, track });
  }

  /**
   * Put the local tracks on this connection. The initiator adds them (or receive-only
   * transceivers when it has none), which makes it offer; the other end waits for that
   * offer and then fills the transceivers it created, so its answer carries its media.
   */
  attachLocalMedia(initiator = false) {
    const pc = this.pc;
    if (this.closed) return;
    const stream = this.client.localStream;
    for (const kind of ["audio", "video"]) {
      const track = stream?.getTracks().find((t) => t.kind === kind) || null;
      const transceiver = pc
        .getTransceivers()
        .find((t) => !t.stopped && (t.receiver.track?.kind === kind || t.sender.track?.kind === kind));
      if (transceiver) {
        if (transceiver.sender.track !== track) {
          transceiver.sender.replaceTrack(track).catch((error) => this._failed(error));
        }
        if (track && transceiver.direction === "recvonly") transceiver.direction = "sendrecv";
      } else if (track) {
        pc.addTrack(track, stream);
      } else if (initiator) {
        pc.addTransceiver(kind, { direction: "recvonly" });
      }
    }
  }

  receiveDescription(description) {
    this._enqueue(async () => {
      const pc = this.pc;
      const collision =
        description.type === "offer" && (this.makingOffer || pc.signalingState !== "stable");
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) return;
      // A polite end with an offer of its own in flight rolls it back implicitly here.
      await pc.setRemoteDescription(description);
      await this._flushCandidates();
      if (description.type === "offer") {
        this.attachLocalMedia();
        await pc.setLocalDescription();
        if (!this.closed) {
          this.client._signal("signal:answer", this.empId, { answer: pc.localDescription.toJSON() });
        }
      }
    });
  }

  receiveCandidate(candidate) {
    this._enqueue(async () => {
      if (!this.pc.remoteDescription) {
        this.pendingCandidates.push(candidate); // until the remote description is set
        return;
      }
      await this._addCandidate(candidate);
    });
  }

  async _flushCandidates() {
    const queued = this.pendingCandidates;
    this.pendingCandidates = [];
    for (const candidate of queued) await this._addCandidate(candidate);
  }

  async _addCandidate(candidate) {
    try {
      // null marks the end of the peer's candidates.
      await this.pc.addIceCandidate(candidate ?? undefined);
    } catch (error) {
      // Candidates of an offer we ignored (or of a rolled-back session) may not apply.
      if (!this.ignoreOffer) console.debug("meshroom: candidate not added", this.empId, error);
    }
  }

  _enqueue(task) {
    this.queue = this.queue
      .then(() => (this.closed ? undefined : task()))
      .catch((error) => this._failed(error));
  }

  _failed(error) {
    if (!this.closed) this.client.emit("error", { error, empId: this.empId });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.pendingCandidates = [];
    this.pc.onicecandidate = this.pc.ontrack = this.pc.onnegotiationneeded = null;
    this.pc.onconnectionstatechange = null;
    this.pc.close();
  }
}
