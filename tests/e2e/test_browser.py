"""The demo page in headless Chromium: three participants, real video, a kick.

Chromium is Debian's ``chromium`` package, driven by Playwright for Python
(``executable_path``; Playwright's own browser downloads are not used). Fake
capture devices give every page a camera and a microphone. Everything runs in
one worker thread, since Playwright's sync API is bound to the thread that
started it; the meshroom server runs on the test's Trio loop meanwhile.

Waits poll an observable condition in the page (``page.evaluate``) until a
deadline: the page's Content-Security-Policy forbids the ``eval`` that
``wait_for_function`` relies on, and the test keeps that policy on.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _servers import RunningServer, server_settings

from meshroom import Server, Settings

from .fakevideo import write_clip

TIMEOUT = 30.0
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "demo.png"
# Each participant's camera shows its own colour, so a tile can be checked for whose video it is.
PEOPLE = {
    "ada": ("Ada Lovelace", (37, 99, 235)),
    "grace": ("Grace Hopper", (217, 119, 6)),
    "alan": ("Alan Turing", (5, 150, 105)),
}

# Per page: every peer connection, its state and the video frames decoded from it.
MESH_STATS = """async () => {
  const client = window.meshroomDemo && window.meshroomDemo.client;
  if (!client || client.state !== "joined") return null;
  const links = [];
  for (const [empId, link] of client.links) {
    let frames = 0;
    (await link.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded || 0;
    });
    links.push({ empId, state: link.pc.connectionState, frames });
  }
  const videos = [...document.querySelectorAll(".tile:not(.self) video")].map(
    (v) => [v.closest(".tile").dataset.empId, v.videoWidth, v.videoHeight]);
  return { empId: client.empId, links, videos };
}"""


def poll(page: Any, expression: str, check: Callable[[Any], bool], what: str) -> Any:
    """Evaluate ``expression`` in the page until ``check`` accepts it, or fail at TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    value = None
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if check(value):
            return value
        page.wait_for_timeout(100)  # let the page run between probes
    raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")


# The colour of a tile's video, sampled in a corner (the clip's background).
TILE_COLOUR = """(empId) => {
  const video = document.querySelector(`.tile[data-emp-id="${empId}"] video`);
  if (!video || !video.videoWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = 32;
  canvas.height = 18;
  const context = canvas.getContext("2d");
  context.drawImage(video, 0, 0, 32, 18);
  return [...context.getImageData(2, 2, 1, 1).data.slice(0, 3)];
}"""


def close_to(colour: Any, expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return colour is not None and all(
        abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True)
    )


def mesh_complete(stats: Any, peers: int = 2) -> bool:
    """Connected to ``peers`` others, with decoded video from each, shown in a sized tile."""
    return (
        stats is not None
        and len(stats["links"]) == peers
        and all(link["state"] == "connected" and link["frames"] > 0 for link in stats["links"])
        and len(stats["videos"]) == peers
        and all(width > 0 and height > 0 for _, width, height in stats["videos"])
    )


def open_participants(
    playwright: Any,
    chromium: str,
    artifacts: Path,
    keys: list[str],
    report: dict[str, Any],
    browsers: list[Any],
) -> list[Any]:
    """One browser per participant (the fake camera clip is a browser-wide flag), one page each.

    Each browser is added to ``browsers`` (for the caller to close, whatever happens); page
    errors and console errors are collected in ``report["errors"]``.
    """
    pages = []
    for key in keys:
        clip = write_clip(artifacts / f"camera-{key}.y4m", PEOPLE[key][1])
        browser = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={clip}"],
            timeout=TIMEOUT * 1000,
        )
        browsers.append(browser)
        page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        page.on("pageerror", lambda e, k=key: report["errors"].append(f"[{k}] {e}"))
        page.on(
            "console",
            lambda m, k=key: (
                m.type == "error" and report["errors"].append(f"[{k}] console: {m.text}")
            ),
        )
        pages.append(page)
    return pages


def start_meeting(page: Any, base_url: str, key: str, title: str) -> str:
    """Create a meeting from the lobby; return its room code."""
    from playwright.sync_api import expect

    page.goto(base_url)
    expect(page.locator("body[data-ready=true]")).to_have_count(1)
    expect(page.locator("#media-status")).to_have_text("Camera and microphone are ready.")
    page.fill("#name", PEOPLE[key][0])
    page.fill("#title", title)
    page.click("#create")
    expect(page.locator("#meeting")).to_be_visible()
    expect(page.locator("#my-role")).to_have_text("Host")
    return str(page.locator("#meeting-code").inner_text())


def join_meeting(page: Any, base_url: str, key: str, code: str) -> None:
    """Follow an invitation link (?room=CODE), give a name, join."""
    from playwright.sync_api import expect

    page.goto(f"{base_url}?room={code}")
    expect(page.locator("body[data-ready=true]")).to_have_count(1)
    expect(page.locator("#room-code")).to_have_value(code)
    page.fill("#name", PEOPLE[key][0])
    page.click("#join")
    expect(page.locator("#meeting")).to_be_visible()


def run_scenario(base_url: str, chromium: str, artifacts: Path) -> dict[str, Any]:
    from playwright.sync_api import expect, sync_playwright

    report: dict[str, Any] = {"errors": []}
    expect.set_options(timeout=TIMEOUT * 1000)
    with sync_playwright() as playwright:
        browsers: list[Any] = []
        try:
            pages = open_participants(
                playwright, chromium, artifacts, list(PEOPLE), report, browsers
            )
            ada, grace, alan = pages

            # Ada starts a meeting; the others join it by its room code.
            code = report["room_code"] = start_meeting(ada, base_url, "ada", "Design review")
            join_meeting(grace, base_url, "grace", code)
            join_meeting(alan, base_url, "alan", code)

            # Every page: two connected peer connections with video frames decoded.
            report["stats"] = [
                poll(page, MESH_STATS, mesh_complete, f"page {i}'s mesh")
                for i, page in enumerate(pages)
            ]
            emp = {key: stats["empId"] for key, stats in zip(PEOPLE, report["stats"], strict=True)}
            report["emp"] = emp

            # Each tile shows its own participant's camera (by its colour), not someone else's.
            for key, page in zip(PEOPLE, pages, strict=True):
                for other in PEOPLE:
                    if other != key:
                        poll(
                            page,
                            f"() => ({TILE_COLOUR})({emp[other]!r})",
                            lambda c, o=other: close_to(c, PEOPLE[o][1]),
                            f"{key}'s tile of {other} to show {other}'s camera",
                        )

            # Presence: Grace mutes; the others see it on her tile and in the list.
            grace.click("#toggle-mic")
            alan.click("#toggle-hand")
            for page in (ada, alan):
                tile = page.locator(f'.tile[data-emp-id="{emp["grace"]}"]')
                expect(tile).to_have_class(re.compile(r"\bmuted\b"))
                expect(tile.locator(".tile-muted")).to_be_visible()
            expect(ada.locator(f'.tile[data-emp-id="{emp["alan"]}"]')).to_have_class(
                re.compile(r"\bhand\b")
            )

            # Host controls are shown only to the host.
            expect(ada.locator("#host-panel")).to_be_visible()
            expect(ada.locator('button[data-action="kick"]')).to_have_count(2)
            for page in (grace, alan):
                expect(page.locator("#host-panel")).to_be_hidden()
                expect(page.locator('button[data-action="kick"]')).to_have_count(0)

            ada.evaluate("document.querySelectorAll('.toast').forEach((t) => t.remove())")
            screenshot = artifacts / "demo-meeting.png"
            ada.screenshot(path=str(screenshot))
            report["screenshot"] = screenshot

            # Ada kicks Alan: his page says so; the others drop his tile and connection.
            ada.click(f'.person[data-emp-id="{emp["alan"]}"] button[data-action="kick"]')
            expect(alan.locator("#notice")).to_be_visible()
            expect(alan.locator("#notice")).to_have_attribute("data-reason", "kicked")
            expect(alan.locator("#notice-title")).to_have_text("You were removed from the meeting")
            alan.screenshot(path=str(artifacts / "demo-kicked.png"))
            for page in (ada, grace):
                expect(page.locator(".tile")).to_have_count(2)
                expect(page.locator(f'.tile[data-emp-id="{emp["alan"]}"]')).to_have_count(0)
                expect(page.locator(f'.person[data-emp-id="{emp["alan"]}"]')).to_have_count(0)
                poll(
                    page,
                    "() => [...window.meshroomDemo.client.links.keys()]",
                    lambda links: emp["alan"] not in links and len(links) == 1,
                    "the link to the kicked peer to close",
                )
            # The two who stay still see each other.
            report["after"] = [
                poll(
                    page,
                    MESH_STATS,
                    lambda s: (
                        s is not None and [link["state"] for link in s["links"]] == ["connected"]
                    ),
                    "the remaining link",
                )
                for page in (ada, grace)
            ]
        finally:
            for browser in browsers:
                browser.close()
    return report


async def test_three_chromium_pages_meet_and_the_host_kicks_one(
    chromium_path: str, e2e_server: RunningServer, artifacts_dir: Path
) -> None:
    base_url = e2e_server.http_url + "/"
    with trio.fail_after(4 * TIMEOUT):
        report = await trio.to_thread.run_sync(
            run_scenario, base_url, chromium_path, artifacts_dir, abandon_on_cancel=True
        )
    assert report["errors"] == []
    screenshot: Path = report["screenshot"]
    assert (await trio.Path(screenshot).stat()).st_size > 10_000
    if os.environ.get("MESHROOM_E2E_UPDATE_DOCS"):
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_IMAGE)
    # The server recorded the same: Alan's attendance ended with the kick.
    meeting = await e2e_server.store.get_meeting_by_code(report["room_code"])
    assert meeting is not None and meeting.title == "Design review"
    records = await e2e_server.store.attendance_for_meeting(meeting.id)
    reasons = {r.display_name: r.leave_reason for r in records}
    assert reasons["Alan Turing"] == "kicked"
    assert set(reasons) == {"Ada Lovelace", "Grace Hopper", "Alan Turing"}


@pytest.fixture(autouse=True)
def _needs_chromium(chromium_path: str) -> None:
    """Checked before the server starts, so a missing browser skips (or fails in CI) at once."""


# Perfect negotiation under glare, and rejoining after the server went away.

# Holds the frames the server sends to this page until released, so that a test can
# make both ends of a connection offer before either sees the other's offer.
HOLD_FRAMES = """() => {
  const client = window.meshroomDemo.client;
  const deliver = client._onFrame.bind(client);
  const held = [];
  client._onFrame = (raw) => held.push(raw);
  window.releaseFrames = () => {
    client._onFrame = deliver;
    for (const raw of held.splice(0)) deliver(raw);
  };
}"""

# Adds a data channel to the (only) peer connection: negotiation is needed, so it offers.
RENEGOTIATE = """() => {
  const pc = [...window.meshroomDemo.client.links.values()][0].pc;
  window.glare = { received: [], channel: pc.createDataChannel("glare") };
  pc.addEventListener("datachannel", ({ channel }) => {
    channel.onmessage = ({ data }) => window.glare.received.push(data);
  });
}"""

# Tags the current peer connection and records peer-left events, to tell afterwards
# whether a reconnection kept the connection (a resume) or rebuilt it (a rejoin).
MARK_LINK = """() => {
  const client = window.meshroomDemo.client;
  const pc = [...client.links.values()][0].pc;
  const left = [];
  client.on("peer-left", ({ empId, reason }) => left.push({ empId, reason }));
  Object.defineProperty(window, "marked", {
    configurable: true,
    get: () => ({ kept: [...client.links.values()][0]?.pc === pc, left }),
  });
}"""

LINK_STATE = """() => {
  const links = [...window.meshroomDemo.client.links.values()];
  return links.length === 1 ? [links[0].pc.signalingState, links[0].pc.connectionState] : null;
}"""


def run_glare_and_restart(
    base_url: str,
    chromium: str,
    artifacts: Path,
    stop_server: Callable[[], None],
    start_server: Callable[[], None],
) -> dict[str, Any]:
    from playwright.sync_api import expect, sync_playwright

    report: dict[str, Any] = {"errors": []}
    expect.set_options(timeout=TIMEOUT * 1000)
    with sync_playwright() as playwright:
        browsers: list[Any] = []
        try:
            pages = open_participants(
                playwright, chromium, artifacts, ["ada", "grace"], report, browsers
            )
            ada, grace = pages
            code = start_meeting(ada, base_url, "ada", "Glare and restart")
            join_meeting(grace, base_url, "grace", code)
            stats = [
                poll(page, MESH_STATS, lambda s: mesh_complete(s, 1), "the pair") for page in pages
            ]
            grace_id = stats[1]["empId"]

            # Glare: both ends offer at once. Neither sees the other's offer until both
            # are in have-local-offer; then the polite end rolls back, the other ignores.
            for page in pages:
                page.evaluate(HOLD_FRAMES)
            for page in pages:
                page.evaluate(RENEGOTIATE)
            for page in pages:
                poll(page, LINK_STATE, lambda s: s and s[0] == "have-local-offer", "an offer")
            for page in pages:
                page.evaluate("() => window.releaseFrames()")
            for page in pages:
                poll(page, LINK_STATE, lambda s: s == ["stable", "connected"], "negotiation")
                poll(
                    page,
                    "() => window.glare.channel.readyState",
                    lambda state: state == "open",
                    "the glare data channel",
                )
                page.evaluate("() => window.glare.channel.send('after glare')")
            for page in pages:
                poll(
                    page,
                    "() => window.glare.received",
                    lambda got: got == ["after glare"],
                    "the other end's message",
                )
            report["glare"] = "resolved"

            # Grace's signaling connection drops (the peer connection itself is fine). Her
            # client reconnects: it resumes its session if the server offered a resume
            # credential — the peer connection is kept and Ada sees no churn — and otherwise
            # rejoins, and both ends build a new peer connection.
            resumable = grace.evaluate("() => !!window.meshroomDemo.client._resumeToken")
            for page in pages:
                page.evaluate(MARK_LINK)
            grace.evaluate("() => window.meshroomDemo.client._ws.close(3001, 'test: drop')")
            for page in pages:
                poll(page, MESH_STATS, lambda s: mesh_complete(s, 1), "the pair after a drop")
            marks = [page.evaluate("() => window.marked") for page in pages]
            if resumable:
                assert marks == [{"kept": True, "left": []}] * 2, marks
            else:
                assert [m["kept"] for m in marks] == [False, False], marks
                assert [e["reason"] for e in marks[0]["left"]] == ["disconnected"], marks
            report["drop"] = "resumed" if resumable else "rejoined"

            # Grace mutes; then the server goes away and comes back.
            grace.click("#toggle-mic")
            expect(ada.locator(f'.tile[data-emp-id="{grace_id}"]')).to_have_class(
                re.compile(r"\bmuted\b")
            )
            stop_server()
            for page in pages:
                expect(page.locator("#reconnecting")).to_be_visible()
                expect(page.locator(".tile")).to_have_count(1)  # only their own
                poll(page, "() => window.meshroomDemo.client.links.size", lambda n: n == 0, "")
            ada.screenshot(path=str(artifacts / "demo-reconnecting.png"))
            start_server()

            # Both rejoin with their tokens and build new peer connections; video flows
            # again, and Grace's presence (muted) is restored by her client.
            for page in pages:
                expect(page.locator("#reconnecting")).to_be_hidden()
                poll(page, MESH_STATS, lambda s: mesh_complete(s, 1), "the pair after restart")
            expect(ada.locator(f'.tile[data-emp-id="{grace_id}"]')).to_have_class(
                re.compile(r"\bmuted\b")
            )
            expect(grace.locator("#toggle-mic")).to_have_attribute("aria-pressed", "true")
            report["rejoined"] = True

            # Ada makes Grace a co-host (who may not end the meeting), then ends it.
            ada.click(f'.person[data-emp-id="{grace_id}"] button[data-action="promote"]')
            expect(grace.locator("#my-role")).to_have_text("Co-host")
            expect(grace.locator("#end-meeting")).to_be_hidden()
            ada.once("dialog", lambda dialog: dialog.accept())  # "End the meeting for everyone?"
            ada.click("#end-meeting")
            expect(grace.locator("#notice")).to_have_attribute("data-reason", "meeting-ended")
            expect(grace.locator("#notice-title")).to_have_text("The meeting has ended")
            expect(ada.locator("#notice")).to_have_attribute("data-reason", "ended-by-me")
        finally:
            for browser in browsers:
                browser.close()
    return report


SETTINGS = set(Settings.model_fields)


class RestartableServer:
    """A meshroom server that a test can stop and start again on the same ports and data."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path) -> None:
        self.nursery = nursery
        # Keep a dropped peer's place for a resume, where this meshroom can.
        resume = {"resume_grace": 10.0} if "resume_grace" in SETTINGS else {}
        # Any free port at the first start; the restarts keep the port it got.
        self.settings = server_settings(tmp_path, http_port=0, stun_urls="", **resume)
        self.server: Server | None = None
        self.stopped = trio.Event()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    async def start(self) -> None:
        server = Server(self.settings)
        stopped = self.stopped = trio.Event()

        async def run(task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await server.run(task_status=task_status)
            finally:
                stopped.set()

        await self.nursery.start(run)
        if self.settings.http_port == 0:
            self.settings = self.settings.model_copy(update={"http_port": server.http_port})
        self.server = server

    async def stop(self) -> None:
        assert self.server is not None
        self.server.request_shutdown()
        await self.stopped.wait()


async def test_two_pages_resolve_glare_rejoin_after_a_server_restart_and_end(
    chromium_path: str, tmp_path: Path, artifacts_dir: Path
) -> None:
    async with trio.open_nursery() as nursery:
        server = RestartableServer(nursery, tmp_path)
        await server.start()

        def stop_server() -> None:
            trio.from_thread.run(server.stop)

        def start_server() -> None:
            trio.from_thread.run(server.start)

        with trio.fail_after(4 * TIMEOUT):
            report = await trio.to_thread.run_sync(
                run_glare_and_restart,
                server.http_url + "/",
                chromium_path,
                artifacts_dir,
                stop_server,
                start_server,
                abandon_on_cancel=True,
            )
        await server.stop()
    # While the server is down the browser logs each refused reconnection attempt.
    refused = re.compile(r"console: WebSocket connection to .* failed: .*ERR_CONNECTION_REFUSED")
    assert [e for e in report["errors"] if not refused.search(e)] == []
    assert report["glare"] == "resolved" and report["rejoined"]


def _docs_offline(chromium: str, base_url: str, artifacts: Path) -> dict[str, Any]:
    """Open /docs with every request off this host refused; what the page shows."""
    from playwright.sync_api import expect, sync_playwright

    refused: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS, timeout=TIMEOUT * 1000
        )
        try:
            page = browser.new_context().new_page()
            page.set_default_timeout(TIMEOUT * 1000)

            def offline(route: Any) -> None:
                if route.request.url.startswith(base_url):
                    route.continue_()
                else:  # as on an air-gapped host
                    refused.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(f"{base_url}/docs")
            title = page.locator(".swagger-ui .info .title")
            expect(title).to_contain_text("meshroom")
            expect(page.locator(".opblock").first).to_be_visible()
            page.screenshot(path=str(artifacts / "docs-offline.png"))
            return {"title": title.inner_text(), "refused": refused}
        finally:
            browser.close()


async def test_the_api_docs_render_without_internet(e2e_server, chromium_path, artifacts_dir):
    with trio.fail_after(TIMEOUT * 3):
        shown = await trio.to_thread.run_sync(
            _docs_offline, chromium_path, e2e_server.http_url, artifacts_dir
        )
    assert "meshroom" in shown["title"]
    assert shown["refused"] == []  # it did not even try to reach the internet
