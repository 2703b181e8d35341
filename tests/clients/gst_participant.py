"""A GStreamer webrtcbin participant for sfu, run with Debian's /usr/bin/python3.

    /usr/bin/python3 tests/clients/gst_participant.py ws://10.77.0.1:8080/ws ROOM NAME [TOKEN]

It joins the room over the control WebSocket, publishes a test pattern (VP8) and a
tone (Opus) on one webrtcbin, answers the server's subscribe offers on another, and
decodes what it receives. Every second it prints one JSON line to stdout:
``{"frames": {participant id: video frames decoded}, "audio": {id: audio buffers
decoded}, "pub": connection state, "sub": connection state}``. GStreamer's webrtcbin
presents an RSA DTLS certificate, which the SFU must accept (tests/test_dtls_rsa.py).

Needs gstreamer1.0-plugins-{base,good,bad}, gstreamer1.0-nice, python3-gst-1.0,
gir1.2-gst-plugins-bad-1.0 and python3-websocket (scripts/install.sh --test). libnice
skips loopback, so the SFU must be reachable on another address (a veth the test makes).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
import websocket  # noqa: E402
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

PUBLISH = (
    "webrtcbin name=pub bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
    "! videoconvert ! vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay pt=96 "
    "! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! pub. "
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
    "! rtpopuspay pt=111 "
    "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! pub."
)


class Participant:
    def __init__(self, url: str, room: str, name: str, token: str | None) -> None:
        self.url, self.room, self.name, self.token = url, room, name, token
        self.ws = websocket.create_connection(url, timeout=10)
        self.loop = GLib.MainLoop()
        self.next_id = 1
        self.mids: dict[str, str] = {}  # subscribe mid → publishing participant id
        self.frames: Counter[str] = Counter()
        self.audio: Counter[str] = Counter()
        self.pub: Any = None  # the publishing webrtcbin
        self.sub: Any = None  # the subscribing one
        self.sub_pipeline: Any = None

    # -- control channel (a reader thread; everything else on the GLib loop) ----------

    def send(self, message: dict[str, Any]) -> None:
        message["id"] = self.next_id
        self.next_id += 1
        self.ws.send(json.dumps(message))

    def read(self) -> None:
        self.ws.settimeout(None)
        while True:
            try:
                text = self.ws.recv()
            except Exception:  # the socket closed: we are done
                GLib.idle_add(self.loop.quit)
                return
            if text:
                GLib.idle_add(self.handle, json.loads(text))

    def handle(self, message: dict[str, Any]) -> bool:
        kind = message.get("type")
        if kind == "joined":
            self.start_publishing()
        elif kind == "answer":
            self.set_remote(self.pub, "answer", message["sdp"])
        elif kind == "offer":
            for track in message.get("tracks", []):
                self.mids[track["mid"]] = track["participant"]
            self.answer_offer(message["sdp"])
        elif kind == "error":
            print(json.dumps({"error": message}), file=sys.stderr, flush=True)
        return False

    # -- publishing ------------------------------------------------------------------

    def start_publishing(self) -> None:
        pipeline = Gst.parse_launch(PUBLISH)
        self.pub = pipeline.get_by_name("pub")
        for transceiver_index in range(2):
            transceiver = self.pub.emit("get-transceiver", transceiver_index)
            if transceiver is not None:
                transceiver.set_property("direction",
                                         GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        self.pub.connect("on-negotiation-needed", self.on_negotiation_needed)
        pipeline.set_state(Gst.State.PLAYING)
        self.pub_pipeline = pipeline

    def on_negotiation_needed(self, element: Any) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, element, None)
        element.emit("create-offer", None, promise)

    def on_offer_created(self, promise: Any, element: Any, _: Any) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            print(json.dumps({"error": f"cannot make an offer: {reply}"}), file=sys.stderr,
                  flush=True)
            return
        element.emit("set-local-description", offer, Gst.Promise.new())
        # Non-trickle: send the offer once every candidate is in it.
        self.when_gathered(element, lambda sdp: self.send({"type": "publish", "sdp": sdp}))

    # -- subscribing -----------------------------------------------------------------

    def answer_offer(self, sdp: str) -> None:
        if self.sub is None:
            self.sub_pipeline = Gst.Pipeline.new("subscribe")
            self.sub = Gst.ElementFactory.make("webrtcbin", "sub")
            self.sub.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
            self.sub.connect("pad-added", self.on_incoming_pad)
            self.sub_pipeline.add(self.sub)
            self.sub_pipeline.set_state(Gst.State.PLAYING)
        element = self.sub

        def answered(promise: Any, _: Any, __: Any) -> None:
            reply = promise.get_reply()
            answer = reply.get_value("answer") if reply is not None else None
            if answer is None:
                print(json.dumps({"error": f"cannot answer the offer: {reply}"}),
                      file=sys.stderr, flush=True)
                return
            element.emit("set-local-description", answer, Gst.Promise.new())
            self.when_gathered(element, lambda text: self.send({"type": "answer", "sdp": text}))

        def remote_set(promise: Any, _: Any, __: Any) -> None:
            element.emit("create-answer", None,
                         Gst.Promise.new_with_change_func(answered, None, None))

        self.set_remote(element, "offer", sdp, remote_set)

    def on_incoming_pad(self, element: Any, pad: Any) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        transceiver = pad.get_property("transceiver")
        mid = transceiver.get_property("mid") if transceiver is not None else None
        publisher = self.mids.get(mid or "", "?")
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self.on_decoded_pad, publisher)
        self.sub_pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_decoded_pad(self, decode: Any, pad: Any, publisher: str) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        is_video = caps.to_string().startswith("video")
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("signal-handoffs", True)
        counter = self.frames if is_video else self.audio
        sink.connect("handoff", lambda *_: counter.update([publisher]))
        self.sub_pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    # -- helpers ---------------------------------------------------------------------

    def set_remote(self, element: Any, kind: str, sdp: str, then: Any = None) -> None:
        _, message = GstSdp.SDPMessage.new_from_text(sdp)
        sdp_type = (GstWebRTC.WebRTCSDPType.OFFER if kind == "offer"
                    else GstWebRTC.WebRTCSDPType.ANSWER)
        description = GstWebRTC.WebRTCSessionDescription.new(sdp_type, message)
        promise = (Gst.Promise.new_with_change_func(then, None, None) if then
                   else Gst.Promise.new())
        element.emit("set-remote-description", description, promise)

    def when_gathered(self, element: Any, send: Any) -> None:
        def check() -> bool:
            state = element.get_property("ice-gathering-state")
            if state != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
                return True  # ask again
            send(element.get_property("local-description").sdp.as_text())
            return False

        GLib.timeout_add(50, check)

    def report(self) -> bool:
        states = {}
        for label, element in (("pub", self.pub), ("sub", self.sub)):
            states[label] = (element.get_property("connection-state").value_nick
                             if element is not None else None)
        print(json.dumps({"frames": dict(self.frames), "audio": dict(self.audio), **states}),
              flush=True)
        return True

    def run(self) -> None:
        threading.Thread(target=self.read, daemon=True).start()
        join = {"type": "join", "room": self.room, "name": self.name}
        if self.token:
            join["token"] = self.token
        self.send(join)
        GLib.timeout_add(1000, self.report)
        self.loop.run()


def main() -> None:
    Gst.init(None)
    url, room, name = sys.argv[1:4]
    Participant(url, room, name, sys.argv[4] if len(sys.argv) > 4 else None).run()


if __name__ == "__main__":
    main()
