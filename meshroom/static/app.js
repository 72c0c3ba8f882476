// The demo meeting page. Plain DOM, no framework: one MeshroomClient (./meshroom.js)
// drives the mesh; this file only renders what it reports and calls it on clicks.

import { MeshroomClient, EndReason, may } from "./meshroom.js";

// Icons: 24x24 stroke paths, drawn with currentColor.
const ICONS = {
  logo: '<circle cx="12" cy="5" r="2.6"/><circle cx="5" cy="18" r="2.6"/><circle cx="19" cy="18" r="2.6"/><path d="M10.7 7.3 6.3 15.7M13.3 7.3l4.4 8.4M7.6 18h8.8"/>',
  mic: '<path d="M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3z"/><path d="M19 11a7 7 0 0 1-14 0"/><path d="M12 18v3"/>',
  "mic-off": '<path d="M9 9v3a3 3 0 0 0 5.1 2.1M15 9.3V6a3 3 0 0 0-5.7-1.3"/><path d="M19 11a7 7 0 0 1-1.2 3.9M16.5 16.9A7 7 0 0 1 5 11"/><path d="M12 18v3"/><path d="M3 3l18 18"/>',
  cam: '<rect x="2.5" y="6" width="13" height="12" rx="2.5"/><path d="M15.5 10.5 21.5 7v10l-6-3.5z"/>',
  "cam-off": '<path d="M10 6h3a2.5 2.5 0 0 1 2.5 2.5v3M15.5 15.5a2.5 2.5 0 0 1-2.5 2.5H5a2.5 2.5 0 0 1-2.5-2.5v-7A2.5 2.5 0 0 1 5 6"/><path d="M17 11.5 21.5 9v8.5"/><path d="M3 3l18 18"/>',
  hand: '<path d="M18 11V6.5a1.75 1.75 0 0 0-3.5 0V11M14.5 10V4.75a1.75 1.75 0 0 0-3.5 0V10M11 10.5V6.25a1.75 1.75 0 0 0-3.5 0V14"/><path d="M18 8.5a1.75 1.75 0 0 1 3.5 0V14a8 8 0 0 1-8 8h-2a8 8 0 0 1-6.5-3.3L2.6 15a1.8 1.8 0 0 1 2.9-2.1l2 2.1"/>',
  leave: '<path d="M2.5 14.2c5.2-5 13.8-5 19 0l-2.6 2.6-3.7-1.6v-2.6a11.8 11.8 0 0 0-6.4 0v2.6l-3.7 1.6z"/>',
  people: '<circle cx="9" cy="8" r="3.5"/><path d="M2.5 20a6.5 6.5 0 0 1 13 0"/><circle cx="17.5" cy="9" r="2.5"/><path d="M17 14a5 5 0 0 1 4.5 5"/>',
  link: '<path d="M10 13.5a4.5 4.5 0 0 0 6.4.4l3-3a4.5 4.5 0 0 0-6.4-6.4l-1.6 1.6"/><path d="M14 10.5a4.5 4.5 0 0 0-6.4-.4l-3 3a4.5 4.5 0 0 0 6.4 6.4l1.6-1.6"/>',
  exit: '<path d="M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4"/><path d="M16 17l5-5-5-5M21 12H9"/>',
  ban: '<circle cx="12" cy="12" r="9"/><path d="M5.6 5.6l12.8 12.8"/>',
  ended: '<circle cx="12" cy="12" r="9"/><path d="M8 12.5l2.7 2.7L16.2 9.5"/>',
  "wifi-off": '<path d="M3 3l18 18"/><path d="M8.5 16.4a5 5 0 0 1 7 0M5 12.9a10 10 0 0 1 4.2-2.5M14.6 10.3A10 10 0 0 1 19 12.9M1.8 9.2a15 15 0 0 1 3.9-2.6M10.7 5.1A15 15 0 0 1 22.2 9.2"/><path d="M12 20h.01"/>',
  tab: '<rect x="3" y="4" width="18" height="16" rx="2"/><path d="M3 9h18M8 4v5"/>',
  clock: '<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/>',
};

function icon(name) {
  const path = ICONS[name];
  return path
    ? `<svg viewBox="0 0 24 24" width="24" height="24" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">${path}</svg>`
    : "";
}

function setIcon(element, name) {
  if (element.dataset.icon === name && element.firstElementChild) return;
  element.dataset.icon = name;
  element.innerHTML = icon(name);
}

function paintIcons(root = document) {
  for (const element of root.querySelectorAll("[data-icon]")) {
    if (element.tagName === "BUTTON" && element.querySelector("[data-icon]")) continue;
    if (!element.querySelector(":scope > svg")) element.insertAdjacentHTML("afterbegin", icon(element.dataset.icon));
  }
}

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "meshroom.session";
const ROLE_LABEL = { HOST: "Host", COHOST: "Co-host", PARTICIPANT: "" };

const app = {
  client: null,
  session: null, // {token, empId, role, signalingPath, meeting: {id, title, roomCode}}
  localStream: null,
  muted: false,
  cameraOff: false,
  handRaised: false,
  tiles: new Map(), // empId -> {element, video}
  banned: new Map(), // empId -> displayName
  endedByMe: false,
};
// For debugging in the console, and for the end-to-end tests.
window.meshroomDemo = app;

// Screens

function show(screen) {
  for (const id of ["lobby", "meeting", "notice"]) $(id).hidden = id !== screen;
  document.body.dataset.screen = screen;
}

function initials(name) {
  const parts = String(name || "?").trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

function hue(text) {
  let h = 0;
  for (const c of String(text)) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

function paintAvatar(element, name, key) {
  element.textContent = initials(name);
  element.style.setProperty("--avatar-hue", hue(key || name));
}

// Media

async function openMedia() {
  const video = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24, max: 30 } };
  const attempts = [
    { audio: true, video },
    { audio: false, video },
    { audio: true, video: false },
  ];
  let lastError = null;
  if (navigator.mediaDevices?.getUserMedia) {
    for (const constraints of attempts) {
      try {
        return await navigator.mediaDevices.getUserMedia(constraints);
      } catch (error) {
        lastError = error;
      }
    }
  }
  console.warn("meshroom: no camera or microphone", lastError);
  return null;
}

function describeMedia(stream) {
  if (!stream) return "No camera or microphone: you can still see and hear the others.";
  const audio = stream.getAudioTracks().length > 0;
  const video = stream.getVideoTracks().length > 0;
  if (audio && video) return "Camera and microphone are ready.";
  return video ? "Camera ready; no microphone found." : "Microphone ready; no camera found.";
}

function applyLocalToggles() {
  const stream = app.localStream;
  if (stream) {
    for (const t of stream.getAudioTracks()) t.enabled = !app.muted;
    for (const t of stream.getVideoTracks()) t.enabled = !app.cameraOff;
  }
  const hasAudio = !!stream?.getAudioTracks().length;
  const hasVideo = !!stream?.getVideoTracks().length;
  for (const [id, off, on, offTitle, onTitle, has] of [
    ["preview-mic", app.muted, "mic", "Turn microphone on", "Turn microphone off", hasAudio],
    ["toggle-mic", app.muted, "mic", "Unmute microphone", "Mute microphone", hasAudio],
    ["preview-cam", app.cameraOff, "cam", "Turn camera on", "Turn camera off", hasVideo],
    ["toggle-cam", app.cameraOff, "cam", "Turn camera on", "Turn camera off", hasVideo],
  ]) {
    const button = $(id);
    const isOff = off || !has;
    setIcon(button, isOff ? `${on}-off` : on);
    button.setAttribute("aria-pressed", String(isOff));
    button.classList.toggle("off", isOff);
    button.disabled = !has;
    button.title = has ? (off ? offTitle : onTitle) : "Not available";
  }
  const hand = $("toggle-hand");
  hand.setAttribute("aria-pressed", String(app.handRaised));
  hand.classList.toggle("active", app.handRaised);
  hand.title = app.handRaised ? "Lower hand" : "Raise hand";

  const previewOff = app.cameraOff || !hasVideo;
  $("preview").hidden = previewOff;
  $("preview-off").hidden = !previewOff;
  $("preview-off-text").textContent = hasVideo ? "Camera is off" : "No camera";
  paintAvatar($("preview-avatar"), $("name").value || "?", app.session?.empId || $("name").value);
  if (app.client) updateTile(app.client.empId || "self");
}

// Lobby

function lobbyError(message) {
  const element = $("lobby-error");
  element.textContent = message || "";
  element.hidden = !message;
}

async function requestJoin(body) {
  let response;
  try {
    response = await fetch("demo/join", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch {
    throw Object.assign(new Error("Cannot reach the server. Check your connection."), { code: "NETWORK" });
  }
  const payload = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = payload.error || {};
    throw Object.assign(new Error(error.message || `HTTP ${response.status}`), {
      code: error.code || "HTTP_ERROR",
      status: response.status,
    });
  }
  return payload;
}

const LOBBY_ERRORS = {
  MEETING_NOT_FOUND: "No meeting has that room code. Check it and try again.",
  MEETING_ENDED: "That meeting has ended.",
  MEETING_NOT_LIVE: "That meeting has not started yet.",
  RATE_LIMITED: "Too many attempts. Wait a moment and try again.",
  INVALID_INPUT: "Please check your name (at most 60 characters) and the room code.",
  STORE_UNAVAILABLE: "The server is busy. Try again in a few seconds.",
};

async function onLobbySubmit(event) {
  event.preventDefault();
  lobbyError("");
  const action = event.submitter?.value || "join";
  const displayName = $("name").value.trim();
  if (!displayName) {
    lobbyError("Please enter your name.");
    $("name").focus();
    return;
  }
  localStorage.setItem("meshroom.name", displayName);
  const body = { displayName };
  if (action === "create") {
    body.create = true;
    const title = $("title").value.trim();
    if (title) body.title = title;
  } else {
    const roomCode = $("room-code").value.trim();
    if (!roomCode) {
      lobbyError("Enter the room code you were given, or start a new meeting.");
      $("room-code").focus();
      return;
    }
    body.roomCode = roomCode;
  }
  const buttons = [$("create"), $("join")];
  for (const b of buttons) b.disabled = true;
  try {
    const session = await requestJoin(body);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    await enterMeeting(session);
  } catch (error) {
    if (error.code === "ROOM_FULL") {
      showNotice("room-full");
    } else {
      lobbyError(LOBBY_ERRORS[error.code] || error.message);
    }
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

// The meeting

function signalingUrl(session) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${session.signalingPath || "/meetings"}`;
}

async function enterMeeting(session) {
  app.session = session;
  app.endedByMe = false;
  app.banned.clear();
  const url = new URL(location.href);
  url.searchParams.set("room", session.meeting.roomCode);
  history.replaceState(null, "", url);

  const client = new MeshroomClient({ url: signalingUrl(session), token: session.token, localStream: app.localStream });
  app.client = client;
  client.presence = { muted: app.muted, cameraOff: app.cameraOff, handRaised: app.handRaised };

  client.on("joined", ({ rejoin }) => {
    $("reconnecting").hidden = true;
    if (rejoin) toast("Reconnected");
    renderAll();
  });
  client.on("peer-joined", ({ peer, snapshot }) => {
    ensureTile(peer.empId);
    renderPeople();
    if (!snapshot) toast(`${peer.displayName} joined`);
  });
  client.on("peer-left", ({ empId, reason }) => {
    const tile = app.tiles.get(empId);
    const name = tile?.name;
    removeTile(empId);
    renderPeople();
    if (reason === "kicked") toast(`${name || "Someone"} was removed`);
    else if (reason === "banned") toast(`${name || "Someone"} was banned`);
    else if (reason !== "reconnecting" && reason !== "replaced" && name) toast(`${name} left`);
  });
  client.on("stream", ({ empId, stream }) => {
    const tile = ensureTile(empId);
    if (tile.video.srcObject !== stream) tile.video.srcObject = stream;
    tile.video.play?.().catch(() => {});
    updateTile(empId);
  });
  client.on("peer-state", ({ empId }) => updateTile(empId));
  client.on("presence", ({ empId, presence }) => {
    updateTile(empId);
    renderPeople();
    const peer = client.peers.get(empId);
    if (peer && presence.handRaised && client.may("kick", empId)) toast(`${peer.displayName} raised a hand`);
  });
  client.on("role-changed", ({ empId, role, reason }) => {
    renderAll();
    if (empId === client.empId) {
      if (role === "HOST" && reason === "host-left") toast("The host left: you are the host now");
      else if (role === "COHOST") toast("You are now a co-host");
      else if (role === "PARTICIPANT") toast("You are no longer a co-host");
    } else {
      const peer = client.peers.get(empId);
      if (peer && role === "COHOST") toast(`${peer.displayName} is now a co-host`);
    }
  });
  client.on("reconnecting", ({ attempt, delay, resuming }) => {
    const overlay = $("reconnecting");
    overlay.hidden = false;
    // Resuming: the calls themselves are kept and may well go on; say so quietly.
    overlay.classList.toggle("soft", resuming);
    const next = `Attempt ${attempt}; next try in ${Math.max(1, Math.round(delay / 1000))} s.`;
    $("reconnecting-detail").textContent = resuming
      ? `${next} Your calls stay up meanwhile.`
      : `${next} Your video resumes when you are back.`;
    renderAll();
  });
  client.on("reconnected", ({ resumed }) => {
    $("reconnecting").hidden = true;
    if (resumed) toast("Reconnected");
    renderAll();
  });
  client.on("closed", ({ reason, by }) => {
    $("reconnecting").hidden = true;
    clearTiles();
    if (reason === EndReason.LEFT) showNotice("left");
    else if (reason === EndReason.MEETING_ENDED && (app.endedByMe || by === client.empId)) showNotice("ended-by-me");
    else showNotice(reason);
  });
  client.on("error", ({ error }) => console.warn("meshroom:", error));

  show("meeting");
  clearTiles();
  ensureTile(null); // our own tile first
  renderAll();
  try {
    await client.join();
  } catch {
    // the "closed" handler shows why
  }
}

// Tiles

function tileKey(empId) {
  return empId === null || empId === app.client?.empId ? "self" : empId;
}

function ensureTile(empId) {
  const key = tileKey(empId);
  let tile = app.tiles.get(key);
  if (tile) return tile;
  const element = $("tile-template").content.firstElementChild.cloneNode(true);
  paintIcons(element);
  element.dataset.empId = key;
  const video = element.querySelector("video");
  if (key === "self") {
    element.classList.add("self");
    video.muted = true;
    video.srcObject = app.localStream;
  } else {
    // The avatar stands in until the first frame is shown.
    element.classList.add("waiting");
    const shown = () => element.classList.toggle("waiting", !video.videoWidth);
    video.addEventListener("loadeddata", shown);
    video.addEventListener("resize", shown);
  }
  tile = { element, video, name: "" };
  app.tiles.set(key, tile);
  $("grid").append(element);
  layoutGrid();
  updateTile(key);
  return tile;
}

function removeTile(empId) {
  const key = tileKey(empId);
  const tile = app.tiles.get(key);
  if (!tile || key === "self") return;
  tile.video.srcObject = null;
  tile.element.remove();
  app.tiles.delete(key);
  layoutGrid();
}

function clearTiles() {
  for (const tile of app.tiles.values()) {
    tile.video.srcObject = null;
    tile.element.remove();
  }
  app.tiles.clear();
  layoutGrid();
}

function layoutGrid() {
  const n = Math.max(1, app.tiles.size);
  const grid = $("grid");
  const cols = n <= 1 ? 1 : n <= 4 ? 2 : n <= 9 ? 3 : 4;
  grid.style.setProperty("--cols", cols);
  grid.style.setProperty("--rows", Math.ceil(n / cols));
  grid.dataset.count = n;
}

function updateTile(empId) {
  const key = tileKey(empId);
  const tile = app.tiles.get(key);
  const client = app.client;
  if (!tile) return;
  let info;
  let stateText = "";
  if (key === "self") {
    const hasVideo = !!app.localStream?.getVideoTracks().length;
    info = {
      empId: client?.empId || "self",
      displayName: client?.self?.displayName || $("name").value || "You",
      role: client?.self?.role,
      presence: { muted: app.muted || !app.localStream?.getAudioTracks().length, cameraOff: app.cameraOff || !hasVideo, handRaised: app.handRaised },
    };
    tile.element.querySelector(".tile-name").textContent = `${info.displayName} (you)`;
  } else {
    info = client?.peers.get(key);
    if (!info) return;
    tile.element.querySelector(".tile-name").textContent = info.displayName;
    const pc = client.peerConnection(key);
    const state = pc?.connectionState || "new";
    if (state !== "connected") stateText = state === "failed" ? "connection failed" : "connecting…";
    tile.element.dataset.state = state;
  }
  tile.name = info.displayName;
  const presence = info.presence || {};
  tile.element.classList.toggle("muted", !!presence.muted);
  tile.element.classList.toggle("camera-off", !!presence.cameraOff);
  tile.element.classList.toggle("hand", !!presence.handRaised);
  tile.element.querySelector(".tile-state").textContent = stateText;
  paintAvatar(tile.element.querySelector(".avatar"), info.displayName, info.empId);
}

// People

function renderAll() {
  const client = app.client;
  const session = app.session;
  $("meeting-title").textContent = client?.meeting?.title || session?.meeting?.title || "Meeting";
  $("meeting-code").textContent = client?.meeting?.roomCode || session?.meeting?.roomCode || "";
  document.title = `${$("meeting-title").textContent} · meshroom`;
  const role = client?.self?.role;
  const badge = $("my-role");
  badge.textContent = role ? ROLE_LABEL[role] : "";
  badge.hidden = !ROLE_LABEL[role];
  badge.dataset.role = role || "";
  for (const empId of app.tiles.keys()) updateTile(empId);
  for (const peer of client?.peers.values() || []) {
    if (!app.tiles.has(peer.empId)) ensureTile(peer.empId);
  }
  renderPeople();
  applyLocalToggles();
}

function renderPeople() {
  const client = app.client;
  const list = $("people");
  list.replaceChildren();
  const everyone = [];
  if (client?.self) everyone.push({ ...client.self, isSelf: true });
  for (const peer of client?.peers.values() || []) everyone.push(peer);
  const order = { HOST: 0, COHOST: 1, PARTICIPANT: 2 };
  everyone.sort((a, b) => (a.isSelf ? -1 : b.isSelf ? 1 : order[a.role] - order[b.role]));
  for (const person of everyone) list.append(personRow(person));
  $("people-count").textContent = everyone.length ? String(everyone.length) : "";

  const myRole = client?.self?.role;
  const canEnd = !!myRole && may(myRole, "end");
  const canUnban = !!myRole && may(myRole, "unban") && app.banned.size > 0;
  $("host-panel").hidden = !(canEnd || canUnban);
  $("end-meeting").hidden = !canEnd;
  const banned = $("banned-list");
  banned.replaceChildren();
  for (const [empId, name] of app.banned) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = name;
    item.append(label, actionButton("Unban", "unban", empId, name));
    banned.append(item);
  }
  $("banned").hidden = !canUnban;
}

function personRow(person) {
  const client = app.client;
  const row = document.createElement("li");
  row.className = "person";
  row.dataset.empId = person.empId;
  const avatar = document.createElement("span");
  avatar.className = "avatar";
  paintAvatar(avatar, person.displayName, person.empId);
  const text = document.createElement("div");
  text.className = "person-text";
  const name = document.createElement("span");
  name.className = "person-name";
  name.textContent = person.displayName + (person.isSelf ? " (you)" : "");
  text.append(name);
  if (ROLE_LABEL[person.role]) {
    const role = document.createElement("span");
    role.className = "role-badge";
    role.dataset.role = person.role;
    role.textContent = ROLE_LABEL[person.role];
    text.append(role);
  }
  const status = document.createElement("span");
  status.className = "person-status";
  const presence = person.isSelf ? { muted: app.muted, cameraOff: app.cameraOff, handRaised: app.handRaised } : person.presence || {};
  if (presence.handRaised) status.insertAdjacentHTML("beforeend", `<span class="st hand" title="Hand raised">${icon("hand")}</span>`);
  if (presence.muted) status.insertAdjacentHTML("beforeend", `<span class="st" title="Muted">${icon("mic-off")}</span>`);
  if (presence.cameraOff) status.insertAdjacentHTML("beforeend", `<span class="st" title="Camera off">${icon("cam-off")}</span>`);
  row.append(avatar, text, status);
  if (!person.isSelf && client) {
    const actions = document.createElement("div");
    actions.className = "person-actions";
    if (client.may("promote", person.empId)) actions.append(actionButton("Make co-host", "promote", person.empId, person.displayName));
    if (client.may("demote", person.empId)) actions.append(actionButton("Remove co-host", "demote", person.empId, person.displayName));
    if (client.may("kick", person.empId)) actions.append(actionButton("Remove", "kick", person.empId, person.displayName));
    if (client.may("ban", person.empId)) actions.append(actionButton("Ban", "ban", person.empId, person.displayName, "danger"));
    if (actions.childElementCount) row.append(actions);
  }
  return row;
}

function actionButton(label, action, empId, name, kind = "") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `mini ${kind}`.trim();
  button.textContent = label;
  button.dataset.action = action;
  button.dataset.target = empId;
  button.title = `${label}: ${name}`;
  button.addEventListener("click", () => hostAction(action, empId, name, button));
  return button;
}

async function hostAction(action, empId, name, button) {
  const client = app.client;
  if (!client) return;
  if (action === "ban" && !confirm(`Ban ${name}? They will not be able to rejoin this meeting.`)) return;
  button.disabled = true;
  try {
    if (action === "kick") await client.kick(empId);
    else if (action === "ban") {
      await client.ban(empId);
      app.banned.set(empId, name);
    } else if (action === "unban") {
      await client.unban(empId);
      app.banned.delete(empId);
      toast(`${name} may join again`);
    } else if (action === "promote") await client.promote(empId);
    else if (action === "demote") await client.demote(empId);
    renderPeople();
  } catch (error) {
    toast(`Could not ${action} ${name}: ${error.data?.message || error.message}`, "error");
    button.disabled = false;
  }
}

// Toasts

function toast(message, kind = "info") {
  const shelf = $("toasts");
  while (shelf.childElementCount >= 3) shelf.firstElementChild.remove();
  const element = document.createElement("div");
  element.className = `toast ${kind}`;
  element.textContent = message;
  shelf.append(element);
  setTimeout(() => element.classList.add("leaving"), 3600);
  setTimeout(() => element.remove(), 4000);
}

// Notices

const NOTICES = {
  kicked: ["exit", "You were removed from the meeting", "A host removed you from “{title}”."],
  banned: ["ban", "You were banned from this meeting", "A host banned you from “{title}”. You cannot rejoin it."],
  "meeting-ended": ["ended", "The meeting has ended", "The host ended “{title}” for everyone. Thanks for joining."],
  "ended-by-me": ["ended", "You ended the meeting", "“{title}” has ended for everyone."],
  "room-full": ["people", "This meeting is full", "Video goes directly between every pair of participants, so meetings stay small. Try again when someone leaves."],
  replaced: ["tab", "You joined from another tab", "This tab was disconnected because you joined the same meeting somewhere else."],
  "connection-lost": ["wifi-off", "Connection lost", "We could not reach the server again. Check your network and rejoin."],
  "connection-failed": ["wifi-off", "Could not connect", "The meeting server did not answer. Check your network and try again."],
  "auth-failed": ["ban", "This invitation is no longer valid", "It may have expired. Go back to start and join again with the room code."],
  "meeting-not-found": ["ban", "Meeting not found", "There is no meeting with that room code."],
  "meeting-not-live": ["clock", "The meeting has not started", "Try again when the host has started it."],
  "duplicate-session": ["tab", "Already in this meeting", "You are connected to this meeting from another tab or device."],
  left: ["exit", "You left the meeting", "“{title}”"],
};
const RETRYABLE = new Set(["left", "connection-lost", "connection-failed", "replaced", "duplicate-session"]);
const FORGET = new Set(["banned", "meeting-ended", "ended-by-me", "auth-failed", "meeting-not-found"]);

function showNotice(reason) {
  const [iconName, title, text] = NOTICES[reason] || ["exit", "Disconnected", `The session ended (${reason}).`];
  const meetingTitle = app.client?.meeting?.title || app.session?.meeting?.title || "the meeting";
  $("notice").dataset.reason = reason;
  $("notice-icon").innerHTML = icon(iconName);
  $("notice-icon").dataset.kind = reason;
  $("notice-title").textContent = title;
  $("notice-text").textContent = text.replace("{title}", meetingTitle);
  $("notice-retry").hidden = !(RETRYABLE.has(reason) && app.session);
  $("notice-retry").textContent = reason === "left" ? "Rejoin" : "Try again";
  if (FORGET.has(reason)) sessionStorage.removeItem(SESSION_KEY);
  app.client = null;
  show("notice");
}

function backToStart() {
  sessionStorage.removeItem(SESSION_KEY);
  app.session = null;
  app.client = null;
  const url = new URL(location.href);
  url.searchParams.delete("room");
  history.replaceState(null, "", url);
  show("lobby");
  applyLocalToggles();
}

// Controls

async function togglePresence(key) {
  app[key] = !app[key];
  applyLocalToggles();
  renderPeople();
  try {
    await app.client?.setPresence({ [key]: app[key] });
  } catch (error) {
    console.warn("meshroom: presence not sent", error);
  }
}

function wireControls() {
  $("join-form").addEventListener("submit", onLobbySubmit);
  $("preview-mic").addEventListener("click", () => togglePresence("muted"));
  $("preview-cam").addEventListener("click", () => togglePresence("cameraOff"));
  $("toggle-mic").addEventListener("click", () => togglePresence("muted"));
  $("toggle-cam").addEventListener("click", () => togglePresence("cameraOff"));
  $("toggle-hand").addEventListener("click", () => togglePresence("handRaised"));
  $("toggle-people").addEventListener("click", () => {
    const hidden = document.body.classList.toggle("sidebar-hidden");
    $("toggle-people").setAttribute("aria-pressed", String(!hidden));
  });
  $("leave").addEventListener("click", () => app.client?.leave());
  $("end-meeting").addEventListener("click", async () => {
    if (!confirm("End the meeting for everyone?")) return;
    app.endedByMe = true;
    try {
      await app.client?.endMeeting();
    } catch (error) {
      app.endedByMe = false;
      toast(`Could not end the meeting: ${error.data?.message || error.message}`, "error");
    }
  });
  $("copy-link").addEventListener("click", async () => {
    const url = new URL(location.href);
    url.search = `?room=${encodeURIComponent(app.session?.meeting?.roomCode || "")}`;
    try {
      await navigator.clipboard.writeText(url.toString());
      toast("Invitation link copied");
    } catch {
      toast(`Room code: ${app.session?.meeting?.roomCode}`);
    }
  });
  $("notice-home").addEventListener("click", backToStart);
  $("notice-retry").addEventListener("click", () => {
    if (app.session) enterMeeting(app.session);
  });
  $("name").addEventListener("input", () => applyLocalToggles());
  // Leaving the page: say so, so that the others see a prompt "left" rather than a timeout.
  window.addEventListener("pagehide", () => app.client?.leave({ wait: false }));
  setInterval(() => {
    $("clock").textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }, 1000);
}

async function main() {
  paintIcons();
  wireControls();
  if (window.innerWidth < 860) document.body.classList.add("sidebar-hidden");
  const params = new URLSearchParams(location.search);
  const room = params.get("room");
  if (room) $("room-code").value = room;
  $("name").value = localStorage.getItem("meshroom.name") || "";
  $("clock").textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  show("lobby");
  app.localStream = await openMedia();
  $("preview").srcObject = app.localStream;
  $("media-status").textContent = describeMedia(app.localStream);
  applyLocalToggles();
  document.body.dataset.ready = "true";
  // A reload in the middle of a meeting rejoins it.
  const saved = sessionStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      const session = JSON.parse(saved);
      if (!room || room === session.meeting.roomCode) {
        await enterMeeting(session);
        return;
      }
    } catch {
      sessionStorage.removeItem(SESSION_KEY);
    }
  }
  (room && $("name").value ? $("join") : $("name")).focus();
}

main();
