// The node-socketio bench target: what the Node service meshroom replaces does for a
// relay, with the npm socket.io server and nothing else (no auth, no database), like
// bench/naive_relay.py. The token is "ROOM|EMP_ID"; signal:* go to data.targetEmpId in
// the same room with fromEmpId stamped in; every emit with a callback is acked.
// Run: node bench/node/relay_server.js --port 9000
"use strict";
const { Server } = require("socket.io");

const port = parseInt(process.argv[process.argv.indexOf("--port") + 1], 10);
const io = new Server(port, { serveClient: false });
const rooms = new Map();
const KEYS = { "signal:offer": "offer", "signal:answer": "answer", "signal:ice": "candidate" };

io.of("/meetings").on("connection", (socket) => {
  const [room, emp] = String(socket.handshake.auth.meetingAccessToken || "").split("|");
  let members = rooms.get(room);
  if (!members) rooms.set(room, (members = new Map()));
  const peers = [...members.keys()].map((empId) => ({ empId }));
  members.set(emp, socket);
  socket.emit("room:joined", { self: { empId: emp }, peers });
  for (const [event, key] of Object.entries(KEYS)) {
    socket.on(event, (data, ack) => {
      const target = data && members.get(data.targetEmpId);
      if (target) target.emit(event, { fromEmpId: emp, [key]: data[key] });
      if (typeof ack === "function") ack({});
    });
  }
  socket.on("ping", (data, ack) => {
    if (typeof ack === "function") ack({});
  });
  socket.on("disconnect", () => {
    if (members.get(emp) === socket) members.delete(emp);
  });
});

const stop = () => io.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
