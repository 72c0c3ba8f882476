from meshroom import Role
from meshroom.client import connect


async def test_two_peers_exchange_an_offer(server):
    meeting = await server.meeting()
    async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:  # noqa: SIM117
        async with connect(server.url, server.token(meeting, "bob")) as bob:
            joined = await alice.wait_for("peer:joined")
            assert joined.data["empId"] == "bob"
            await bob.offer("alice", {"type": "offer", "sdp": "v=0"})
            offer = await alice.wait_for("signal:offer")
            assert offer.data == {"fromEmpId": "bob", "offer": {"type": "offer", "sdp": "v=0"}}
