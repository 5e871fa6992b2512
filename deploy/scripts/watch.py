#!/usr/bin/env python3
"""Watch an Otako gateway session: connects with a token and prints every frame.

    deploy/scripts/watch.py TOKEN [ws://127.0.0.1:8080/gateway]

Sends heartbeats at the interval HELLO gives, as a real client must.
"""
import asyncio
import json
import random
import sys

import websockets


async def main(token: str, url: str) -> None:
    async with websockets.connect(url, additional_headers={"Authorization": token}) as ws:
        hello = json.loads(await ws.recv())
        print(json.dumps(hello), flush=True)
        interval = hello["d"]["heartbeat_interval"] / 1000
        last_s = None

        async def beat() -> None:
            # The first beat is jittered so reconnecting clients spread out.
            await asyncio.sleep(interval * random.random())
            while True:
                await ws.send(json.dumps({"op": 1, "d": last_s}))
                await asyncio.sleep(interval)

        beater = asyncio.create_task(beat())
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("s") is not None:
                    last_s = frame["s"]
                if frame.get("op") != 11:
                    print(json.dumps(frame), flush=True)
        finally:
            beater.cancel()
        print(f"closed: {ws.close_code} {ws.close_reason}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ws://127.0.0.1:8080/gateway"))
