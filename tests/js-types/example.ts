// A typed program against meshroom.js: it must compile with `tsc --noEmit`, and each
// expect-error line below must be an error (so the declarations are not `any`).
import {
  CloseCode,
  EndReason,
  ErrorCode,
  MeshroomClient,
  MeshroomError,
  Role,
  may,
  type PeerInfo,
  type Snapshot,
} from "../../meshroom/static/meshroom.js";

async function meet(token: string, localStream: MediaStream): Promise<PeerInfo[]> {
  const client = new MeshroomClient({ url: "ws://127.0.0.1:8080/meetings", token, localStream });
  client.on("stream", ({ empId, stream, track }) => {
    console.log(empId, stream.id, track.kind);
  });
  client.on("peer-left", ({ empId, reason }) => console.log(empId, reason));
  client.on("role-changed", ({ empId, role, previousRole, by }) => {
    const promoted: boolean = role === Role.COHOST && previousRole === Role.PARTICIPANT;
    console.log(empId, promoted, by ?? "the server");
  });
  client.on("closed", ({ reason, code }) => {
    if (reason === EndReason.KICKED && code === CloseCode.KICKED) console.log("kicked");
  });
  client.on("reconnecting", ({ attempt, delay, resuming }) => console.log(attempt, delay, resuming));
  client.on("*", ({ type }) => console.log(type));

  let snapshot: Snapshot;
  try {
    snapshot = await client.join();
  } catch (error) {
    if (error instanceof MeshroomError && error.code === ErrorCode.BANNED) return [];
    throw error;
  }
  const host: string = snapshot.meeting.hostEmpId;
  const presence = await client.setPresence({ handRaised: true });
  const raised: boolean = presence.handRaised;
  if (client.may("kick", "bob") && may(Role.HOST, "kick", Role.PARTICIPANT)) {
    const ack = await client.kick("bob");
    console.log(ack.targetEmpId);
  }
  const unbanned: boolean = (await client.unban("bob")).unbanned;
  const pc: RTCPeerConnection | undefined = client.peerConnection(host);
  console.log(raised, unbanned, pc?.connectionState, snapshot.resumeToken?.length);
  await client.leave({ wait: false });
  return [...client.peers.values()];
}

function mistakes(client: MeshroomClient): void {
  // @ts-expect-error: no such event
  client.on("peer-joind", () => {});
  // @ts-expect-error: peer-left carries no stream
  client.on("peer-left", ({ stream }) => console.log(stream));
  // @ts-expect-error: an employee id is a string
  void client.kick(42);
  // @ts-expect-error: not an action
  may(Role.HOST, "delete");
  // @ts-expect-error: presence has no such key
  void client.setPresence({ dancing: true });
  // @ts-expect-error: url and token are required
  new MeshroomClient({ url: "ws://x/meetings" });
}

export { meet, mistakes };
