"""The store says which of a set of meetings are ENDED, in one query, on every backend."""

from __future__ import annotations

from meshroom.store import MeetingStatus, SqlStore


async def test_ended_among_names_exactly_the_ended_meetings(db_url):
    store = SqlStore(db_url)
    await store.open()
    try:
        ids = []
        for n in range(3):
            meeting = await store.create_meeting(title=f"M{n}", host_emp_id="alice")
            ids.append((await store.transition(meeting.id, MeetingStatus.LIVE)).id)
        await store.transition(ids[1], MeetingStatus.ENDED)
        assert await store.ended_among(ids) == {ids[1]}
        assert await store.ended_among([ids[0], "no-such-meeting"]) == set()
        assert await store.ended_among([]) == set()
    finally:
        await store.close()
