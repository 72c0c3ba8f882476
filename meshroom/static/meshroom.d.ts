// TypeScript declarations for meshroom.js, the browser client of the meshroom
// signaling server (docs/js-client.md; the wire protocol is docs/protocol.md).
// Checked in CI: tests/js-types compiles a typed example against this file with
// `tsc --noEmit`, and tests/test_js_tables.py checks the tables against the server's.

/** WebSocket close codes meshroom sends (protocol.md §7). */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  INTERNAL_ERROR: 1011;
  TRY_AGAIN_LATER: 1013;
  AUTH_REQUIRED: 4000;
  AUTH_FAILED: 4001;
  AUTH_TIMEOUT: 4002;
  MEETING_UNAVAILABLE: 4003;
  BANNED: 4004;
  KICKED: 4005;
  MEETING_ENDED: 4006;
  REPLACED: 4007;
  DUPLICATE_SESSION: 4008;
  SLOW_CONSUMER: 4009;
  HEARTBEAT_TIMEOUT: 4010;
  ROOM_FULL: 4011;
  RATE_LIMITED: 4012;
  RESUMED_ELSEWHERE: 4013;
}>;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** The `data.code` of an error frame (protocol.md §6). */
export declare const ErrorCode: Readonly<{
  BAD_JSON: "BAD_JSON";
  BAD_FRAME: "BAD_FRAME";
  UNKNOWN_EVENT: "UNKNOWN_EVENT";
  INVALID_FIELD: "INVALID_FIELD";
  FRAME_TOO_LARGE: "FRAME_TOO_LARGE";
  BINARY_NOT_SUPPORTED: "BINARY_NOT_SUPPORTED";
  RATE_LIMITED: "RATE_LIMITED";
  TARGET_NOT_FOUND: "TARGET_NOT_FOUND";
  FORBIDDEN: "FORBIDDEN";
  CANNOT_TARGET_SELF: "CANNOT_TARGET_SELF";
  INVALID_TRANSITION: "INVALID_TRANSITION";
  ALREADY_AUTHENTICATED: "ALREADY_AUTHENTICATED";
  STORE_UNAVAILABLE: "STORE_UNAVAILABLE";
  AUTH_REQUIRED: "AUTH_REQUIRED";
  AUTH_FAILED: "AUTH_FAILED";
  AUTH_TIMEOUT: "AUTH_TIMEOUT";
  MEETING_NOT_FOUND: "MEETING_NOT_FOUND";
  MEETING_NOT_LIVE: "MEETING_NOT_LIVE";
  MEETING_ENDED: "MEETING_ENDED";
  BANNED: "BANNED";
  KICKED: "KICKED";
  DUPLICATE_SESSION: "DUPLICATE_SESSION";
  ROOM_FULL: "ROOM_FULL";
  SHUTTING_DOWN: "SHUTTING_DOWN";
  CLUSTER_UNAVAILABLE: "CLUSTER_UNAVAILABLE";
  INTERNAL_ERROR: "INTERNAL_ERROR";
}>;
/** A server error code, or one of the client's own (NOT_CONNECTED, TIMEOUT). */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode] | "NOT_CONNECTED" | "TIMEOUT";

/** Why a session ended for good: the `reason` of the "closed" event. */
export declare const EndReason: Readonly<{
  LEFT: "left";
  KICKED: "kicked";
  BANNED: "banned";
  MEETING_ENDED: "meeting-ended";
  REPLACED: "replaced";
  ROOM_FULL: "room-full";
  AUTH_FAILED: "auth-failed";
  MEETING_NOT_FOUND: "meeting-not-found";
  MEETING_NOT_LIVE: "meeting-not-live";
  DUPLICATE_SESSION: "duplicate-session";
  CONNECTION_FAILED: "connection-failed";
  CONNECTION_LOST: "connection-lost";
}>;
export type EndReason = (typeof EndReason)[keyof typeof EndReason];

export declare const Role: Readonly<{ HOST: "HOST"; COHOST: "COHOST"; PARTICIPANT: "PARTICIPANT" }>;
export type Role = (typeof Role)[keyof typeof Role];

export type Action = "kick" | "ban" | "unban" | "end" | "promote" | "demote";

/** Whether a peer with role `actor` may perform `action` (on a peer whose role is `target`). */
export declare function may(actor: Role, action: Action, target?: Role): boolean;

/** Why a peer left: `peer:left.data.reason` (protocol.md §5.3). */
export type LeaveReason =
  | "left"
  | "disconnected"
  | "kicked"
  | "banned"
  | "meeting-ended"
  | "replaced"
  | "slow-consumer"
  | "timeout"
  | "rate-limited"
  | "server-shutdown"
  | "error";

export interface Presence {
  muted: boolean;
  cameraOff: boolean;
  handRaised: boolean;
}

export interface PeerInfo {
  empId: string;
  displayName: string;
  role: Role;
  presence: Presence;
}

export interface MeetingInfo {
  id: string;
  title: string;
  roomCode: string;
  hostEmpId: string;
}

/** The `room:joined` (and `room:resumed`) snapshot (protocol.md §5.1, §5.11). */
export interface Snapshot {
  self: PeerInfo;
  meeting: MeetingInfo;
  peers: PeerInfo[];
  iceServers: RTCIceServer[];
  /** Present when the server keeps a dropped peer's place for a resume. */
  resumeToken?: string;
  /** room:resumed only: how many frames follow at once. */
  queued?: number;
}

export interface RoleChange {
  empId: string;
  role: Role;
  previousRole: Role;
  reason: "promote" | "demote" | "host-left" | "host-returned";
  by: string | null;
}

/** Every event a MeshroomClient emits, with its detail. */
export interface MeshroomEvents {
  joined: Snapshot & { rejoin: boolean };
  "peer-joined": { peer: PeerInfo; snapshot: boolean };
  "peer-left": { empId: string; reason: LeaveReason | "reconnecting" | EndReason };
  stream: { empId: string; stream: MediaStream; track: MediaStreamTrack };
  "peer-state": { empId: string; state: RTCPeerConnectionState };
  presence: { empId: string; presence: Presence };
  "role-changed": RoleChange;
  reconnecting: { attempt: number; delay: number; code: number; resuming: boolean };
  reconnected: { resumed: boolean };
  closed: { reason: EndReason; code: number; message: string; by?: string | null };
  error: { error: Error; empId?: string };
  /** Every frame the server pushes, unchanged. */
  event: { name: string; data: Record<string, unknown> };
  /** Every event above. */
  "*": { type: Exclude<keyof MeshroomEvents, "*">; detail: unknown };
}

export declare class MeshroomError extends Error {
  constructor(code: string, message: string, data?: Record<string, unknown>);
  readonly code: ErrorCode | EndReason | string;
  readonly data: Record<string, unknown>;
}

export declare class Emitter<Events extends object = MeshroomEvents> {
  /** Returns a function that removes the handler. */
  on<K extends keyof Events>(type: K, handler: (detail: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, handler: (detail: Events[K]) => void): void;
  once<K extends keyof Events>(type: K, handler: (detail: Events[K]) => void): () => void;
  emit<K extends keyof Events>(type: K, detail: Events[K]): void;
}

export interface MeshroomClientOptions {
  /** The signaling WebSocket: ws[s]://host/meetings. */
  url: string;
  /** The meeting access token. */
  token: string;
  localStream?: MediaStream | null;
  rtcConfig?: RTCConfiguration;
  /** Backoff in ms; `false` never reconnects. */
  reconnect?: { initialDelay?: number; maxDelay?: number; maxAttempts?: number } | false;
  heartbeatInterval?: number;
  heartbeatTimeout?: number;
  requestTimeout?: number;
  /** For tests and other runtimes: the WebSocket and RTCPeerConnection to use. */
  WebSocket?: typeof WebSocket;
  RTCPeerConnection?: typeof RTCPeerConnection;
}

export type ClientState = "idle" | "connecting" | "joined" | "reconnecting" | "closed";

export declare class MeshroomClient extends Emitter<MeshroomEvents> {
  constructor(options: MeshroomClientOptions);
  readonly url: string;
  readonly token: string;
  localStream: MediaStream | null;
  state: ClientState;
  self: PeerInfo | null;
  meeting: MeetingInfo | null;
  iceServers: RTCIceServer[];
  readonly peers: Map<string, PeerInfo>;
  presence: Presence;
  get empId(): string | null;
  get role(): Role | null;

  /** Connect, authenticate and join; rejects with a MeshroomError if refused. */
  join(): Promise<Snapshot>;
  /** `{wait: false}` (for "pagehide") does not wait for the server's answer. */
  leave(options?: { wait?: boolean }): Promise<void>;
  setLocalStream(stream: MediaStream | null): void;
  setPresence(changes: Partial<Presence>): Promise<Presence>;
  setMuted(muted: boolean): Promise<Presence>;
  setCameraOff(cameraOff: boolean): Promise<Presence>;
  setHandRaised(handRaised: boolean): Promise<Presence>;
  kick(empId: string): Promise<{ targetEmpId: string }>;
  ban(empId: string, reason?: string): Promise<{ targetEmpId: string }>;
  unban(empId: string): Promise<{ targetEmpId: string; unbanned: boolean }>;
  promote(empId: string): Promise<{ targetEmpId: string; role: Role }>;
  demote(empId: string): Promise<{ targetEmpId: string; role: Role }>;
  endMeeting(): Promise<{ meetingId: string }>;
  /** Whether this participant's role allows `action` (on that peer). */
  may(action: Action, targetEmpId?: string): boolean;
  peerConnection(empId: string): RTCPeerConnection | undefined;
  /** Any request; resolves with the ack's data. */
  request(event: string, data?: Record<string, unknown>, timeout?: number): Promise<Record<string, unknown>>;
}
