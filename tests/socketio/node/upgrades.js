// Connects socket.io-client v4 with its default transports (long-polling, then the
// upgrade to WebSocket) once per token given on stdin, one after the other, and
// reports for each whether the Engine.IO upgrade happened (see test_upgrade.py).
// stdin: one JSON line {url, tokens: [...]}; stdout: one JSON line per connection
// ({type: "result", i, upgraded, transport, error}), then {type: "end"}.
"use strict";
const readline = require("readline");
const { io } = require("socket.io-client");

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// One connection: resolves once the namespace is connected *and* the upgrade has
// settled (the engine's "upgrade" or "upgradeError"), whichever comes last.
function once(url, token) {
  return new Promise((resolve) => {
    const socket = io(url + "/meetings", {
      auth: { meetingAccessToken: token },
      forceNew: true,
      reconnection: false,
    });
    let connected = false;
    let upgrade = null; // {upgraded, error}
    const settle = () => {
      if (!connected || upgrade === null) return;
      const transport = socket.io.engine.transport.name;
      socket.disconnect();
      resolve({ ...upgrade, transport });
    };
    socket.io.on("open", () => {
      const engine = socket.io.engine;
      engine.on("upgrade", () => {
        upgrade = { upgraded: true, error: null };
        settle();
      });
      engine.on("upgradeError", (err) => {
        upgrade = { upgraded: false, error: String(err) };
        settle();
      });
    });
    socket.on("connect", () => {
      connected = true;
      settle();
    });
    socket.on("connect_error", (err) => resolve({ upgraded: false, transport: null, error: "connect_error: " + err.message }));
  });
}

readline.createInterface({ input: process.stdin }).once("line", async (line) => {
  const { url, tokens } = JSON.parse(line);
  for (let i = 0; i < tokens.length; i++) {
    out({ type: "result", i, ...(await once(url, tokens[i])) });
  }
  out({ type: "end" });
  process.exit(0);
});
