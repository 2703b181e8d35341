"""Participant metadata (docs/protocol.md, "Participant metadata"): from the token, set
by the participant when its token allows it, set by the backend (embedding and admin
API); everyone hears `participant_updated`; size and grant are enforced."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import pytest

from sfu import events
from sfu.client import Client, ServerError
from sfu.control.auth import ALGORITHM
from tests.conftest import jwt_config, requires_isolated_network, running

pytestmark = requires_isolated_network
SECRET = "m" * 32


async def test_metadata_from_the_token_the_participant_and_the_backend() -> None:
    async with running(jwt_config(SECRET)) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        heard: list[events.Event] = []

        async def listen(event: events.Event) -> None:
            if isinstance(event, events.ParticipantUpdated):
                heard.append(event)

        server.events.add_listener(listen)
        alice = Client(url, room="m", name="alice", token=server.mint_token(
            "m", "alice", can_update_metadata=True, metadata={"role": "host"}))
        bob = Client(url, room="m", name="bob", token=server.mint_token("m", "bob"))
        try:
            joined = await alice.join()
            assert joined["participant"]["metadata"] == {"role": "host"}
            assert joined["can_update_metadata"] is True
            joined = await bob.join()
            assert joined["can_update_metadata"] is False
            assert joined["participants"][0]["metadata"] == {"role": "host"}  # late joiner
            assert (await alice.next_event("participant_joined"))["participant"]["metadata"] == {}

            # The participant, with the grant: everyone hears it, alice too.
            assert (await alice.set_metadata({"hand": True}))["type"] == "metadata_set"
            for client in (alice, bob):
                update = await client.next_event("participant_updated")
                assert update["participant"] == {"id": alice.participant_id, "name": "alice",
                                                 "metadata": {"hand": True}}

            # Without the grant: refused, nobody hears anything.
            with pytest.raises(ServerError, match="forbidden"):
                await bob.set_metadata({"hand": True})

            # Too large: refused with the limit named.
            limit = server.config.limits.max_metadata_bytes
            with pytest.raises(ServerError) as info:
                await alice.set_metadata({"text": "x" * limit})
            assert info.value.message["code"] == "bad_field" and str(limit) in str(info.value)

            # The backend may set anyone's: the embedding API and the admin API.
            server.set_metadata("m", bob.participant_id or "", {"muted_by_host": True})
            for client in (alice, bob):
                update = await client.next_event("participant_updated")
                assert update["participant"]["metadata"] == {"muted_by_host": True}
            admin = jwt.encode({"admin": True, "exp": time.time() + 60}, SECRET, ALGORITHM)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:
                base = f"http://127.0.0.1:{server.port}/admin/rooms/m/participants/"
                async with http.post(base + f"{alice.participant_id}/metadata",
                                     json={"metadata": {"title": "chair"}}) as response:
                    assert response.status == 204
                async with http.post(base + f"{alice.participant_id}/metadata",
                                     json={"metadata": ["not", "an", "object"]}) as response:
                    assert response.status == 400
                async with http.get(f"http://127.0.0.1:{server.port}/admin/rooms/m") as response:
                    room = await response.json()
            for client in (alice, bob):
                update = await client.next_event("participant_updated")
                assert update["participant"]["metadata"] == {"title": "chair"}
            assert {p["id"]: p["metadata"] for p in room["participants"]} == {
                alice.participant_id: {"title": "chair"},
                bob.participant_id: {"muted_by_host": True}}
            with pytest.raises(ValueError, match="bytes"):
                server.set_metadata("m", bob.participant_id or "", {"x": "y" * limit})

            async with asyncio.timeout(5):
                while len(heard) < 3:
                    await asyncio.sleep(0.05)
            assert [e.metadata for e in heard] == [  # type: ignore[attr-defined]
                {"hand": True}, {"muted_by_host": True}, {"title": "chair"}]
        finally:
            await alice.close()
            await bob.close()


async def test_a_token_with_oversized_metadata_is_refused() -> None:
    async with running(jwt_config(SECRET)) as server:
        big = {"x": "y" * server.config.limits.max_metadata_bytes}
        client = Client(f"ws://127.0.0.1:{server.port}/ws", room="m", name="n",
                        token=server.mint_token("m", "n", metadata=big))
        try:
            with pytest.raises(ServerError, match="bad_field"):
                await client.join()
        finally:
            await client.close()
