// Drives one unmodified socket.io-client v4 socket for tests/socketio (see harness.py).
// stdin: one JSON command per line; stdout: one JSON observation per line.
// The connection code is the seed frontend's: io(url + '/meetings', {auth: {meetingAccessToken}}).
"use strict";
const readline = require("readline");
const { io } = require("socket.io-client");

let socket = null;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function connect(cmd) {
  const options = {
    auth: cmd.auth,
    forceNew: true,
    // Fast, deterministic retries for the tests; everything else is the default.
    reconnectionDelay: 50,
    reconnectionDelayMax: 100,
    randomizationFactor: 0,
  };
  if (cmd.transports) options.transports = cmd.transports;
  if (cmd.reconnection === false) options.reconnection = false;
  if (cmd.reconnectionDelay) options.reconnectionDelay = options.reconnectionDelayMax = cmd.reconnectionDelay;
  socket = io(cmd.url + (cmd.namespace || "/meetings"), options);
  const manager = socket.io;
  manager.on("open", () => {
    const engine = manager.engine;
    out({ type: "open", transport: engine.transport.name });
    engine.on("upgrade", (transport) => out({ type: "upgrade", transport: transport.name }));
    engine.on("upgrading", (transport) => out({ type: "upgrading", transport: transport.name }));
    engine.on("upgradeError", (err) => out({ type: "upgrade_error", message: String(err) }));
  });
  manager.on("reconnect_attempt", (n) => out({ type: "reconnect_attempt", attempt: n }));
  manager.on("close", (reason) => out({ type: "engine_close", reason }));
  socket.on("connect", () => out({ type: "connect", transport: manager.engine.transport.name }));
  socket.on("connect_error", (err) =>
    out({ type: "connect_error", message: err.message, data: err.data === undefined ? null : err.data })
  );
  socket.on("disconnect", (reason) => out({ type: "disconnect", reason, active: socket.active }));
  socket.onAny((event, ...args) => out({ type: "event", event, data: args[0] === undefined ? null : args[0] }));
}

function handle(cmd) {
  switch (cmd.cmd) {
    case "connect":
      connect(cmd);
      break;
    case "emit":
      if (cmd.ack) {
        socket.emit(cmd.event, cmd.data, (...args) => out({ type: "ack", tag: cmd.tag, args }));
      } else {
        socket.emit(cmd.event, cmd.data);
      }
      break;
    case "emit_binary":
      socket.emit(cmd.event, { blob: Buffer.from("not json") }, (...args) =>
        out({ type: "ack", tag: cmd.tag, args })
      );
      break;
    case "drop":
      // The transport goes away under the socket (as when a network drops): the
      // manager sees "transport close" and reconnects on its own.
      socket.io.engine.close();
      break;
    case "disconnect":
      socket.disconnect();
      break;
    case "state":
      out({ type: "state", connected: socket.connected, active: socket.active });
      break;
    case "exit":
      if (socket) socket.disconnect();
      process.exit(0);
  }
  out({ type: "done", cmd: cmd.cmd, tag: cmd.tag === undefined ? null : cmd.tag });
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim()) handle(JSON.parse(line));
});
process.stdin.on("end", () => process.exit(0));
out({ type: "ready" });
