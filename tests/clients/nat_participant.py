"""A participant behind a NAT (tests/test_doctor.py), run inside the client's namespace:
runs the NAT test against the STUN server, joins with what it found, publishes video,
and prints a JSON line when it knows its NAT type and another when it has decoded a
frame of someone else's video; then stays until killed.

    python nat_participant.py WS_URL STUN_HOST LOCAL_ADDRESS NAME TOKEN
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiortc import VideoStreamTrack

from sfu.client import Client
from sfu.diagnostics.nat import discover


async def main(url: str, stun_host: str, local_address: str, name: str, token: str) -> None:
    report = await discover((stun_host, 3478), timeout=0.6)
    print(json.dumps({"nat_type": report.nat_type}), flush=True)
    client = Client(url, room="nat", name=name, token=token, nat_type=report.nat_type,
                    host_addresses=(local_address,))
    await client.join()
    await client.publish([VideoStreamTrack()])
    _, track = await client.next_track()
    await asyncio.wait_for(track.recv(), 30)
    print(json.dumps({"received": True}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
