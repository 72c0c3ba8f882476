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
from conftest import RunningServer

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


def mesh_complete(stats: Any) -> bool:
    return (
        stats is not None
        and len(stats["links"]) == 2
        and all(link["state"] == "connected" and link["frames"] > 0 for link in stats["links"])
        and len(stats["videos"]) == 2
        and all(width > 0 and height > 0 for _, width, height in stats["videos"])
    )


def run_scenario(base_url: str, chromium: str, artifacts: Path) -> dict[str, Any]:
    from playwright.sync_api import expect, sync_playwright

    report: dict[str, Any] = {"errors": []}
    expect.set_options(timeout=TIMEOUT * 1000)
    with sync_playwright() as playwright:
        browsers = []
        try:
            pages = []
            # One browser per participant: the fake camera clip is a browser-wide flag.
            for index, (key, (_, colour)) in enumerate(PEOPLE.items()):
                clip = write_clip(artifacts / f"camera-{key}.y4m", colour)
                browser = playwright.chromium.launch(
                    executable_path=chromium,
                    headless=True,
                    args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={clip}"],
                    timeout=TIMEOUT * 1000,
                )
                browsers.append(browser)
                context = browser.new_context(viewport={"width": 1280, "height": 720})
                page = context.new_page()
                page.set_default_timeout(TIMEOUT * 1000)
                page.on("pageerror", lambda e, i=index: report["errors"].append(f"[{i}] {e}"))
                page.on(
                    "console",
                    lambda m, i=index: (
                        m.type == "error" and report["errors"].append(f"[{i}] console: {m.text}")
                    ),
                )
                pages.append(page)
            ada, grace, alan = pages

            # Ada starts a meeting; the others join it by its room code.
            ada.goto(base_url)
            expect(ada.locator("body[data-ready=true]")).to_have_count(1)
            expect(ada.locator("#media-status")).to_have_text("Camera and microphone are ready.")
            ada.fill("#name", PEOPLE["ada"][0])
            ada.fill("#title", "Design review")
            ada.click("#create")
            expect(ada.locator("#meeting")).to_be_visible()
            expect(ada.locator("#my-role")).to_have_text("Host")
            code = ada.locator("#meeting-code").inner_text()
            report["room_code"] = code
            for page, name in ((grace, PEOPLE["grace"][0]), (alan, PEOPLE["alan"][0])):
                page.goto(f"{base_url}?room={code}")
                expect(page.locator("body[data-ready=true]")).to_have_count(1)
                expect(page.locator("#room-code")).to_have_value(code)
                page.fill("#name", name)
                page.click("#join")
                expect(page.locator("#meeting")).to_be_visible()

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
