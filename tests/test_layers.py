"""Choosing simulcast layers (sfu.router.layers), a subscriber's downlink and its probes
(sfu.router.bandwidth), and the SDP that simulcast and transport-cc need
(sfu.transport.sdp_extras): sans-IO, so without a network."""

from __future__ import annotations

import sdp_transform  # type: ignore[import-untyped]

from sfu import rtp
from sfu.bwe.twcc import build_feedback
from sfu.router import bandwidth
from sfu.router.bandwidth import Downlink
from sfu.router.layers import (
    UPSWITCH_HEADROOM,
    Layer,
    LayerMeter,
    Preferences,
    Request,
    allocate,
    wanted,
)
from sfu.transport import sdp_extras

LOW, MID, HIGH = (Layer(150_000, 160, 120, True), Layer(500_000, 320, 240, True),
                  Layer(1_200_000, 640, 480, True))
LAYERS = [LOW, MID, HIGH]


def test_wanted_follows_size_quality_pause_and_what_is_sent() -> None:
    assert wanted(LAYERS, Preferences()) == 2
    assert wanted(LAYERS, Preferences(max_width=400)) == 1
    assert wanted(LAYERS, Preferences(max_width=100)) == 0  # none fits: the lowest
    assert wanted(LAYERS, Preferences(max_height=120)) == 0
    assert wanted(LAYERS, Preferences(quality="medium")) == 1
    assert wanted(LAYERS, Preferences(quality="low")) == 0
    assert wanted(LAYERS, Preferences(paused=True)) is None
    # The publisher stopped its top layer (its own uplink is short): the best left.
    assert wanted([LOW, MID, Layer(0, 640, 480, False)], Preferences()) == 1
    assert wanted([Layer(0, 0, 0, False)] * 3, Preferences()) is None
    # Sizes unknown (not VP8): only quality limits.
    unknown = [Layer(b, 0, 0, True) for b in (100, 300, 900)]
    assert wanted(unknown, Preferences(max_width=10)) == 2


def request(key: str, current: int | None = None, **prefs: object) -> Request:
    return Request(key, LAYERS, Preferences(**prefs), current)  # type: ignore[arg-type]


def test_allocate_shares_the_estimate_a_layer_at_a_time() -> None:
    two = [request("a"), request("b")]
    assert allocate(two, None) == {"a": 2, "b": 2}  # no estimate: as wished
    assert allocate(two, 300_000) == {"a": 0, "b": 0}
    assert allocate(two, 100_000) == {"a": 0, "b": 0}  # never below the lowest layer
    # Climbing in turn: both reach the middle before either takes the top.
    assert allocate(two, int((500_000 + 500_000) / UPSWITCH_HEADROOM) + 1) == {"a": 1, "b": 1}
    assert allocate(two, 2_000_000) == {"a": 2, "b": 1}
    assert allocate([request("a", paused=True), request("b")], 2_000_000) == {
        "a": None, "b": 2}


def test_staying_needs_less_than_climbing() -> None:
    budget = 1_300_000  # the top layer fits, but not with the headroom a climb needs
    assert allocate([request("a", current=1)], budget) == {"a": 1}
    assert allocate([request("a", current=2)], budget) == {"a": 2}


def test_the_meter_measures_rate_peak_and_activity() -> None:
    meter = LayerMeter()
    assert meter.sample(1, 0, 0, 0, 0, 0).active is False
    layer = meter.sample(1, 100, 125_000, 320, 240, 1_000_000)  # 1 Mbit in a second
    assert layer.active and layer.bitrate_bps == 1_000_000 and layer.width == 320
    # Half the rate: the peak decays slowly rather than following it down at once.
    layer = meter.sample(1, 150, 187_500, 320, 240, 2_000_000)
    assert 900_000 <= layer.bitrate_bps < 1_000_000
    # No packet for two seconds: not being sent.
    assert meter.sample(1, 150, 187_500, 320, 240, 4_000_000).active is False


class Sent:
    """What a forwarder would say it sent: one 1,000-byte packet a millisecond apart."""

    def __init__(self) -> None:
        self.records: dict[int, tuple[int, int, int]] = {}

    def send(self, seq: int, at_us: int, size: int = 1_000) -> None:
        self.records[seq] = (seq, at_us, size)

    def __call__(self, base: int, count: int) -> list[tuple[int, int, int] | None]:
        return [self.records.get(base + k) for k in range(count)]


def feedback_for(sent: Sent, first: int, last: int, delay_us: int,
                 lost: frozenset[int] = frozenset()) -> bytes:
    reference = sent.records[first][1] // 64_000 * 64_000  # the receiver's clock is ours
    arrivals = [(seq, None if seq in lost else sent.records[seq][1] + delay_us)
                for seq in range(first, last + 1)]
    return build_feedback(1, 2, first, reference, 0, arrivals)


def test_a_downlink_without_feedback_is_not_limited_after_its_grace() -> None:
    downlink = Downlink(2_500_000, now_us=0)
    assert downlink.budget_bps(0) == bandwidth.INITIAL_BPS
    assert downlink.budget_bps(bandwidth.FEEDBACK_GRACE_US) is None
    assert not downlink.should_probe(10_000_000, 0)  # nothing to judge a probe by


def test_a_probe_lifts_the_estimate_when_the_link_carries_it() -> None:
    downlink, sent = Downlink(2_500_000, now_us=0), Sent()
    for seq in range(100):  # 1 Mbit/s of media, arriving 20 ms later
        sent.send(seq, seq * 8_000)
    downlink.on_feedback(feedback_for(sent, 0, 99, 20_000), sent, 800_000)
    assert downlink.has_estimate and downlink.estimate_bps is not None
    assert downlink.should_probe(1_400_000, 800_000)
    target = downlink.start_probe(1_400_000, 800_000)
    assert target == int(1_400_000 * bandwidth.PROBE_HEADROOM)
    # Padding at the probe's rate, paced in steps, on top of the media.
    assert downlink.probe_packets(800_000) > 0
    seq = 100
    for step in range(25):
        at = 800_000 + step * bandwidth.PROBE_STEP_US
        count = downlink.probe_packets(at)
        for size in [1_250, 1_250] + [300] * count:  # the media go on: 1 Mbit/s
            sent.send(seq, at, size)
            seq += 1
        downlink.probe_sent(300 * count, count)
    assert downlink.probe_packets(800_000 + bandwidth.PROBE_DURATION_US + 1) == 0
    sent.send(seq, 1_400_000)  # a packet after the window: feedback has passed it
    downlink.on_feedback(feedback_for(sent, 100, seq, 20_000), sent, 1_450_000)
    assert not downlink.probing and downlink.probes_succeeded == 1
    assert downlink.estimate_bps is not None and downlink.estimate_bps > 1_500_000


def test_a_failed_probe_backs_off_and_marks_the_link_limited() -> None:
    downlink, sent = Downlink(2_500_000, now_us=0), Sent()
    for seq in range(50):
        sent.send(seq, seq * 8_000)
    downlink.on_feedback(feedback_for(sent, 0, 49, 20_000), sent, 400_000)
    downlink.start_probe(2_000_000, 400_000)
    for seq in range(50, 150):  # the probe: most of it lost, the rest late
        sent.send(seq, 400_000 + (seq - 50) * 6_000)  # past the window at the end
    lost = frozenset(range(50, 150, 2))
    downlink.on_feedback(feedback_for(sent, 50, 149, 200_000, lost), sent, 1_200_000)
    assert not downlink.probing and downlink.probes_succeeded == 0
    assert downlink.limited(1_200_000)
    assert not downlink.should_probe(2_000_000, 1_300_000)  # backing off
    assert downlink.should_probe(10_000_000, 1_200_000 + 2 * bandwidth.PROBE_BACKOFF_MIN_US)


def test_malformed_feedback_is_counted() -> None:
    downlink = Downlink(2_500_000, now_us=0)
    downlink.on_feedback(b"\x8f\xcd\x00\x01garbage", Sent(), 0)
    assert downlink.malformed == 1 and not downlink.has_estimate


CHROME_OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "a=msid-semantic: WMS s",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendonly",
    "a=rtpmap:111 opus/48000/2",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=ssrc:11 cname:x",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "c=IN IP4 0.0.0.0", "a=mid:1", "a=sendonly",
    "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack", "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;~f", "",
])


def test_a_rid_simulcast_offer_is_read_and_accepted() -> None:
    offered = sdp_extras.offered_simulcast(CHROME_OFFER)
    assert offered == {"1": sdp_extras.SimulcastOffer(("q", "h", "f"), (), 10)}
    answer = CHROME_OFFER.replace("a=sendonly", "a=recvonly").replace(
        "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;~f\r\n", "")
    answer = answer.replace("a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n", "")
    accepted = sdp_transform.parse(sdp_extras.accept_simulcast(CHROME_OFFER, answer))
    video = accepted["media"][1]
    assert [r["id"] for r in video["rids"]] == ["q", "h", "f"]
    assert {r["direction"] for r in video["rids"]} == {"recv"}
    assert video["simulcast"] == {"dir1": "recv", "list1": "q;h;f"}
    assert {"value": 10, "uri": rtp.URI_RID} in video["ext"]
    assert "rids" not in accepted["media"][0]  # audio is never simulcast


def test_values_that_look_like_numbers_come_back_as_written() -> None:
    """sdp-transform reads "5e12" and "0123" as numbers; what we write back must be the
    text the description had (a browser refuses an ufrag "5000000000000.0")."""
    offer = CHROME_OFFER.replace("a=ice-ufrag:abcd", "a=ice-ufrag:5e12").replace(
        "a=ice-pwd:abcdefghijklmnopqrstuvwx", "a=ice-pwd:0123456789012345678901").replace(
        "a=ssrc:11 cname:x", "a=ssrc:11 cname:0123")
    for written in (sdp_extras.offer_transport_cc(offer, 5),
                    sdp_extras.accept_simulcast(offer, offer.replace("send", "recv"))):
        lines = written.split("\r\n")
        assert "a=ice-ufrag:5e12" in lines and "a=ice-pwd:0123456789012345678901" in lines
        assert "a=ssrc:11 cname:0123" in lines


def test_an_ssrc_group_offer_gives_layers_by_ssrc() -> None:
    offer = CHROME_OFFER.replace("a=simulcast:send q;h;~f", "a=ssrc-group:SIM 1 2 3")
    offer = offer.replace("a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n", "")
    assert sdp_extras.offered_simulcast(offer) == {
        "1": sdp_extras.SimulcastOffer((), (1, 2, 3), 0)}


def test_transport_cc_is_offered_and_read_back() -> None:
    offer = sdp_extras.offer_transport_cc(CHROME_OFFER.replace("a=sendonly", "a=sendonly"), 5)
    parsed = sdp_transform.parse(offer)
    for media in parsed["media"]:
        assert {"value": 5, "uri": rtp.URI_TWCC} in media["ext"]
        kinds = {(f["payload"], f["type"]) for f in media["rtcpFb"]}
        assert all((c["payload"], "transport-cc") in kinds for c in media["rtp"]
                   if c["codec"] != "rtx")
        assert media.get("fingerprint", {"type": "sha-256"})["type"] == "sha-256"
    assert sdp_extras.answered_extension(offer, "1", rtp.URI_TWCC) == 5
    assert sdp_extras.answered_extension(CHROME_OFFER, "1", rtp.URI_TWCC) == 0


def test_remb_follows_subscribers_only_once_all_have_shown_their_limit() -> None:
    from dataclasses import dataclass
    from types import SimpleNamespace
    from typing import Any, cast

    from sfu.media import CodecInfo, PublishedMedia
    from sfu.router.allocation import REMB_FLOOR_BPS, LayerAllocator
    from sfu.router.room import Participant, Subscription, Track
    from sfu.transport.peer import now_us

    media = PublishedMedia("0", "video", 0, CodecInfo(96, "video/VP8", 90000, {}), {},
                           ("q", "h", "f"))
    track = Track("TR_v", "pub", "video", 1, media, layers=(1, 2, 3))

    @dataclass
    class Link:
        participant: Participant
        subscribe: Any

    links = {}
    for number, endpoint in enumerate((10, 11)):
        participant = Participant(f"p{number}", f"p{number}", "")
        participant.subscriptions[track.id] = Subscription(track, 100 + number)
        links[participant.id] = Link(participant, SimpleNamespace(endpoint=endpoint))
    allocator = LayerAllocator(cast(Any, None), cast(Any, None), lambda: cast(Any, links))
    maximum = 2_500_000
    assert allocator.remb_bps(track, maximum) == maximum  # no estimates yet
    sent, base = Sent(), now_us()  # remb_bps reads the clock
    for endpoint in (10, 11):
        downlink = allocator.downlinks[endpoint] = Downlink(maximum, now_us=base)
        for seq in range(50):
            sent.send(seq, base + seq * 8_000)
        downlink.on_feedback(feedback_for(sent, 0, 49, 20_000), sent, base + 400_000)
    # Estimated, but neither link has shown a limit: the publisher is not held back.
    assert allocator.remb_bps(track, maximum) == maximum
    for downlink in allocator.downlinks.values():  # each link fails a probe
        downlink.start_probe(2_000_000, base + 400_000)
        for seq in range(50, 150):
            sent.send(seq, base + 400_000 + (seq - 50) * 6_000)
        downlink.on_feedback(feedback_for(sent, 50, 149, 200_000, frozenset(range(50, 150, 2))),
                             sent, base + 1_200_000)
        assert downlink.limited(now_us())
    best = max(d.estimate_bps or 0 for d in allocator.downlinks.values())
    assert allocator.remb_bps(track, maximum) == max(REMB_FLOOR_BPS, int(best * 1.5))
    audio = Track("TR_a", "pub", "audio", 4, media)
    assert allocator.remb_bps(audio, 64_000) == 64_000
