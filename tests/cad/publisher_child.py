"""Run a CadPublisher in its own process (for the kill -9 test): argv db host port node."""

from __future__ import annotations

import asyncio
import sys

from cad.publisher import CadPublisher
from config.schema import MqttSettings
from store.db import Database


async def main(path: str, host: str, port: str, node: str) -> None:
    db = Database(path)
    settings = MqttSettings(host=host, port=int(port), node=node, client_id=f"child-{node}",
                            reconnect_max=1.0)
    pub = CadPublisher(settings, db, poll_interval=0.1)
    print("ready", flush=True)
    await pub.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
