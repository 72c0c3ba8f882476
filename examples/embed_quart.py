"""An existing quart-trio application that adds meshroom in two lines.

Run it:

    pip install -e .
    hypercorn --worker-class trio examples/embed_quart:app --bind 127.0.0.1:5000

Then: the app's own page at http://127.0.0.1:5000/, meshroom's API at
http://127.0.0.1:5000/meshroom/api/..., its docs at /meshroom/docs and the
signaling WebSocket at ws://127.0.0.1:5000/meshroom/meetings.
"""

from __future__ import annotations

import os

from quart_trio import QuartTrio

from meshroom.http import Meshroom

app = QuartTrio(__name__)
# meshroom reads its settings from MESHROOM_* keys of the app's config, then from
# the environment (MESHROOM_SECRET, MESHROOM_API_KEYS, ...), then its defaults.
app.config["MESHROOM_DATABASE_URL"] = os.environ.get(
    "MESHROOM_DATABASE_URL", "sqlite:///embedded.db"
)

meshroom = Meshroom(app, url_prefix="/meshroom")


@app.get("/")
async def index() -> dict[str, str]:
    return {"app": "my meetings portal", "signaling": "/meshroom/meetings"}


if __name__ == "__main__":
    app.run()
