"""A small Trio client for meshroom: used by the tests, the benchmarks and bots.

async with meshroom.client.connect("ws://127.0.0.1:8765/meetings", token) as peer:
    print(peer.snapshot["peers"])
    await peer.offer("bob", {"type": "offer", "sdp": "..."})
    async for event in peer:
        print(event.name, event.data)
"""

from ._client import Event as Event
from ._client import JoinRefused as JoinRefused
from ._client import MeshroomError as MeshroomError
from ._client import Peer as Peer
from ._client import connect as connect
