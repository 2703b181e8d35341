"""RTP header rules, codecs and the forwarder's counters, as plain functions and
constants (no I/O, no state). RTCP packets are in sfu.rtcp.packets.

The pure-Python forwarder uses these directly; the Cython forwarder implements the
same rules in C and the differential tests hold the two to byte-identical output.
Bit layouts: RTP RFC 3550 §5.1, header extensions RFC 8285 §4.
"""

from __future__ import annotations

import struct

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
# Largest datagram the forwarder handles (Ethernet MTU minus IP/UDP headers, rounded up).
MAX_PACKET_SIZE = 1500
# Largest plaintext RTP packet the forwarder protects and sends. pylibsrtp's Session
# refuses more (a 1500-byte buffer less its 144-byte trailer reserve), so both
# forwarders hold to it; a rewritten packet that grew past it is skipped and counted.
MAX_PROTECT_SIZE = 1500 - 144

# Header extensions the forwarder treats specially (RFC 8285 URIs).
URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
# Audio level (RFC 6464): how loud each packet is, for active-speaker detection.
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
# RID-based simulcast (RFC 8852): which encoding of an m-line a packet belongs to.
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
# Transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01).
URI_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

# Codecs, as small ints the fast path can switch on.
CODEC_OTHER = 0
CODEC_OPUS = 1
CODEC_VP8 = 2
CODEC_H264 = 3
CODECS_BY_NAME = {"opus": CODEC_OPUS, "vp8": CODEC_VP8, "h264": CODEC_H264}

# Forwarder.receive: datagrams read per recvmmsg(2) (sfu/_fastpath.pxd's RECEIVE_BATCH),
# batches per call at most (then the event loop's other work has its turn), and the
# buffer each is read into (its BUFFER_SIZE: a longer one is cut short, and dropped).
RECEIVE_BATCH = 32
RECEIVE_MAX_BATCHES = 8
RECEIVE_BUFFER = 1500 + 160

# An audio level (RFC 6464, -dBov) at least this loud counts as a loud packet: speech,
# not background (sfu.router.speakers).
LOUD_DBOV = 50

# Result of Forwarder.handle_packet and indexes into its counters. 0 is success;
# every other value is a drop reason. Keep in step with sfu/_fastpath.pyx.
OK = 0
DROP_TOO_SHORT = 1
DROP_BAD_VERSION = 2
DROP_BAD_HEADER = 3
DROP_UNKNOWN_ENDPOINT = 4
DROP_SRTP_FAIL = 5
DROP_UNKNOWN_SSRC = 6
DROP_BAD_RTCP = 7
DROP_TOO_LONG = 8
DROP_REASONS = (
    "ok",
    "too_short",
    "bad_version",
    "bad_header",
    "unknown_endpoint",
    "srtp_fail",
    "unknown_ssrc",
    "bad_rtcp",
    "too_long",
)
# Per-subscriber outcomes of one incoming packet, counted after the drop reasons.
C_SENT = len(DROP_REASONS)
C_SENT_BYTES = C_SENT + 1
C_SKIP_PAYLOAD_TYPE = C_SENT + 2
C_SKIP_WAITING_KEYFRAME = C_SENT + 3
C_SKIP_BEFORE_START = C_SENT + 4
C_SEND_ERROR = C_SENT + 5
C_PROTECT_ERROR = C_SENT + 6
C_RTP_IN = C_SENT + 7
C_RTCP_IN = C_SENT + 8
C_KEYFRAME_REQUESTS_SENT = C_SENT + 9
C_KEYFRAME_REQUESTS_THROTTLED = C_SENT + 10
C_NACK_IN = C_SENT + 11
C_RR_IN = C_SENT + 12
C_SR_IN = C_SENT + 13
C_REMB_IN = C_SENT + 14
C_SKIP_NOT_CONNECTED = C_SENT + 15
C_SKIP_TOO_LONG = C_SENT + 16
C_SKIP_PAUSED = C_SENT + 17
C_SR_SENT = C_SENT + 18
C_RETRANSMITTED = C_SENT + 19
C_RETRANSMIT_MISSED = C_SENT + 20
C_NACK_REQUESTED = C_SENT + 21
C_NACK_RECOVERED = C_SENT + 22
C_NACK_GAVE_UP = C_SENT + 23
C_KEYFRAME_WAITS = C_SENT + 24
C_KEYFRAME_WAIT_US = C_SENT + 25
C_NACK_OUT_OF_HISTORY = C_SENT + 26
C_NACK_TOO_SOON = C_SENT + 27
C_NACK_BUDGET_EXCEEDED = C_SENT + 28
C_LOSS_LISTENER_ERRORS = C_SENT + 29
C_SKIP_CONSUMER_PAUSED = C_SENT + 30
C_LAYER_SWITCHES = C_SENT + 31
C_SKIP_LAYER_PENDING = C_SENT + 32
C_RID_BOUND = C_SENT + 33
C_TWCC_IN = C_SENT + 34
C_FEEDBACK_LISTENER_ERRORS = C_SENT + 35
C_PROBE_PACKETS = C_SENT + 36
C_PROBE_BYTES = C_SENT + 37
COUNTER_NAMES = (
    *(f"drop_{name}" if name != "ok" else "accepted" for name in DROP_REASONS),
    "sent",
    "sent_bytes",
    "skip_payload_type",
    "skip_waiting_keyframe",
    "skip_before_start",
    "send_error",
    "protect_error",
    "rtp_in",
    "rtcp_in",
    "keyframe_requests_sent",
    "keyframe_requests_throttled",
    "nack_in",
    "rr_in",
    "sr_in",
    "remb_in",
    "skip_not_connected",
    "skip_too_long",
    "skip_paused",
    "sr_sent",
    "retransmitted",
    "retransmit_missed",
    "nack_requested",
    "nack_recovered",
    "nack_gave_up",
    "keyframe_waits",  # consumers that waited for a keyframe to (re)start video
    "keyframe_wait_us",  # and how long, in all
    # Sequence numbers subscribers NACKed and were not resent (sfu.rtcp.retransmit):
    "nack_out_of_history",  # not among the last HISTORY_SIZE sent to them
    "nack_too_soon",  # resent less than an interval ago
    "nack_budget_exceeded",  # beyond the consumer's retransmission budget
    "loss_listener_errors",  # exceptions the loss listener raised (set_loss_listener)
    "skip_consumer_paused",  # not sent: the subscriber paused the subscription
    "layer_switches",  # consumers moved to another simulcast layer, at its keyframe
    "skip_layer_pending",  # a target layer's packets before its keyframe came
    "rid_bound",  # simulcast layers whose SSRC was learned from their RID
    "twcc_in",  # transport-wide feedback packets from subscribers
    "feedback_listener_errors",  # exceptions the feedback listener raised
    "probe_packets",  # packets resent to probe a subscriber's bandwidth (Forwarder.probe)
    "probe_bytes",
)
# Sent packets an endpoint remembers (transport-wide sequence number, send time, size)
# for its transport-wide feedback: a second of 4 Mbit/s video, and more.
TWCC_HISTORY = 4096
# A probe (Forwarder.probe) sends at most PROBE_MAX_PACKETS padding-only packets a call,
# each with PROBE_PADDING bytes of padding (the most the padding count byte can say).
PROBE_MAX_PACKETS = 128
PROBE_PADDING = 255
# Packets a video consumer keeps for retransmission (RFC 4585 NACK): at ~170 packets/s
# of 1.7 Mbit/s video, about three seconds.
HISTORY_SIZE = 512

# "Never resent", in a history slot's resend time.
RESENT_NEVER = -(1 << 62)


def extend_seq(highest: int, seq: int) -> int:
    """The extended (64-bit) sequence number of ``seq`` next to ``highest`` (RFC 3550 A.1).

    ``highest`` is the largest extended sequence number seen so far; ``seq`` may be
    ahead of it or behind it by less than half the 16-bit range.
    """
    delta = (seq - highest) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    return highest + delta


def abs_send_time(now_us: int) -> int:
    """24-bit abs-send-time: seconds in 6.18 fixed point, wrapping every 64 s.

    Reducing modulo 64 s first is exact and keeps the shift within 64 bits for C.
    """
    return ((now_us % 64_000_000) << 18) // 1_000_000


class HeaderLayout:
    """Offsets in one RTP packet, found by :func:`parse_header`."""

    __slots__ = ("ext_length", "ext_offset", "ext_profile", "payload_end", "payload_offset")

    def __init__(
        self,
        ext_profile: int,
        ext_offset: int,
        ext_length: int,
        payload_offset: int,
        payload_end: int,
    ) -> None:
        self.ext_profile = ext_profile  # 0 when there is no extension
        self.ext_offset = ext_offset  # first byte of the extension data
        self.ext_length = ext_length  # bytes of extension data
        self.payload_offset = payload_offset
        self.payload_end = payload_end  # before padding


def parse_header(data: bytes) -> HeaderLayout | int:
    """The layout of an RTP packet, or a drop reason (``DROP_*``)."""
    size = len(data)
    if size < RTP_HEADER_SIZE:
        return DROP_TOO_SHORT
    first = data[0]
    if first >> 6 != RTP_VERSION:
        return DROP_BAD_VERSION
    offset = RTP_HEADER_SIZE + 4 * (first & 0x0F)
    ext_profile = ext_offset = ext_length = 0
    if first & 0x10:
        if offset + 4 > size:
            return DROP_BAD_HEADER
        ext_profile = (data[offset] << 8) | data[offset + 1]
        ext_length = 4 * ((data[offset + 2] << 8) | data[offset + 3])
        ext_offset = offset + 4
        offset = ext_offset + ext_length
    if offset > size:
        return DROP_BAD_HEADER
    end = size
    if first & 0x20:
        padding = data[size - 1]
        if padding == 0 or offset + padding > size:
            return DROP_BAD_HEADER
        end = size - padding
    return HeaderLayout(ext_profile, ext_offset, ext_length, offset, end)


def read_extensions(data: bytes, layout: HeaderLayout) -> list[tuple[int, bytes]] | None:
    """The (id, value) elements of a one-byte or two-byte extension block (RFC 8285).

    Returns [] for a profile this forwarder does not understand, None when the block
    is malformed.
    """
    elements: list[tuple[int, bytes]] = []
    pos = layout.ext_offset
    end = pos + layout.ext_length
    if layout.ext_profile == 0xBEDE:
        while pos < end:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            ext_id = byte >> 4
            if ext_id == 15:  # reserved: stop parsing (RFC 8285 §4.2)
                break
            length = (byte & 0x0F) + 1
            if pos + 1 + length > end:
                return None
            elements.append((ext_id, data[pos + 1 : pos + 1 + length]))
            pos += 1 + length
    elif layout.ext_profile & 0xFFF0 == 0x1000:
        while pos < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                return None
            length = data[pos + 1]
            if pos + 2 + length > end:
                return None
            elements.append((ext_id, data[pos + 2 : pos + 2 + length]))
            pos += 2 + length
    return elements


def write_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """An extension block (profile, length and data), one-byte form when it fits.

    Empty when there are no elements: the caller then clears the X bit.
    """
    if not elements:
        return b""
    one_byte = all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements)
    body = bytearray()
    if one_byte:
        for ext_id, value in elements:
            body.append((ext_id << 4) | (len(value) - 1))
            body += value
        profile = 0xBEDE
    else:
        for ext_id, value in elements:
            body.append(ext_id)
            body.append(len(value))
            body += value
        profile = 0x1000
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", profile, len(body) // 4) + bytes(body)


def is_keyframe_start(codec: int, payload: bytes) -> bool:
    """Whether this payload starts a keyframe, so a new subscriber may begin with it."""
    if codec == CODEC_VP8:
        return _vp8_keyframe_start(payload)
    if codec == CODEC_H264:
        return _h264_keyframe(payload)
    # Audio and codecs without a detector: any packet is a place to start.
    return True


def _vp8_keyframe_start(payload: bytes) -> bool:
    pos = _vp8_header(payload)
    return pos >= 0 and not payload[pos] & 0x01


def _vp8_header(payload: bytes) -> int:
    """Where the VP8 payload header (RFC 7741 §4.3) starts when this packet starts a
    frame's first partition, else -1: after the §4.2 payload descriptor."""
    size = len(payload)
    if size < 1:
        return -1
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S bit set, partition index 0
        return -1
    pos = 1
    if first & 0x80:  # X: extension byte
        if pos >= size:
            return -1
        ext = payload[pos]
        pos += 1
        if ext & 0x80:  # I: picture id, one or two bytes
            if pos >= size:
                return -1
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: one byte
            pos += 1
    return pos if pos < size else -1


def vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) when the payload starts a VP8 keyframe: its frame header (RFC
    6386 §9.1) follows the 3-byte frame tag: start code 9d 01 2a, then 14-bit width and
    height, little-endian. None otherwise."""
    pos = _vp8_header(payload)
    if pos < 0 or payload[pos] & 0x01 or pos + 10 > len(payload):
        return None
    if payload[pos + 3 : pos + 6] != b"\x9d\x01\x2a":
        return None
    width = (payload[pos + 6] | payload[pos + 7] << 8) & 0x3FFF
    height = (payload[pos + 8] | payload[pos + 9] << 8) & 0x3FFF
    return width, height


def _h264_keyframe(payload: bytes) -> bool:
    # RFC 6184 §5: IDR (5) or SPS (7), alone, in a STAP-A (24) or starting an FU-A (28).
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (5, 7):
        return True
    if nal_type == 24:
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            if payload[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal_type == 28 and len(payload) >= 2:
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (5, 7)
    return False


def twcc_value_offset(packet: bytes | bytearray) -> int:
    """Where the transport-wide sequence number sits in a packet the forwarder wrote:
    its extension block starts with that element (one-byte or two-byte form)."""
    header_end = RTP_HEADER_SIZE + 4 * (packet[0] & 0x0F)
    profile = packet[header_end] << 8 | packet[header_end + 1]
    return header_end + 4 + (1 if profile == 0xBEDE else 2)


def padding_packet(payload_type: int, seq: int, timestamp: int, ssrc: int, twcc_id: int,
                   twcc_seq: int) -> bytes:
    """A padding-only RTP packet (RFC 3550 §5.1) carrying a transport-wide sequence
    number, as the forwarder's probes send: the receiver's decoder skips it."""
    if twcc_id <= 14:  # one-byte form: the element, then a byte of padding
        ext = struct.pack("!HHBHx", 0xBEDE, 1, (twcc_id << 4) | 1, twcc_seq & 0xFFFF)
    else:
        ext = struct.pack("!HHBBH", 0x1000, 1, twcc_id, 2, twcc_seq & 0xFFFF)
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10, payload_type, seq, timestamp, ssrc)
    return header + ext + bytes(PROBE_PADDING - 1) + bytes([PROBE_PADDING])


def check_layer_ids(rid: bytes, rid_id: int, mid: bytes, mid_id: int) -> None:
    """Raise ValueError for a simulcast layer no packet could name."""
    if len(rid) > 16 or len(mid) > 16:
        raise ValueError("rid and mid must be at most 16 bytes")
    if not (0 <= rid_id <= 255 and 0 <= mid_id <= 255) or bool(rid) != bool(rid_id):
        raise ValueError("a rid needs its extension id (1..255), and only then")


def check_consumer_tables(
    payload_types: dict[int, int], ext_map: dict[int, int], mid: bytes, mid_id: int,
    abs_send_time_id: int, twcc_id: int = 0,
) -> None:
    """Raise ValueError for tables no RTP packet could use (both forwarders call this)."""
    if not all(0 <= k <= 127 and 0 <= v <= 127 for k, v in payload_types.items()):
        raise ValueError("payload types must be 0..127")
    if not all(1 <= k <= 255 and 1 <= v <= 255 for k, v in ext_map.items()):
        raise ValueError("header extension ids must be 1..255")
    if not 1 <= len(mid) <= 16:
        raise ValueError("mid must be 1 to 16 bytes")
    if not (0 <= mid_id <= 255 and 0 <= abs_send_time_id <= 255 and 0 <= twcc_id <= 255):
        raise ValueError("extension ids must be 0..255")
    if twcc_id and twcc_id in ext_map.values():
        raise ValueError("the transport-wide sequence number's id is the forwarder's own")


def clock_rate(codec: int) -> int:
    """RTP clock rate of a codec (RFC 7587 Opus: 48 kHz; video: 90 kHz)."""
    return 48_000 if codec == CODEC_OPUS else 90_000


def to_rtp_units(now_us: int, rate: int) -> int:
    """A time in microseconds as RTP timestamp units, without overflowing 64 bits."""
    return (now_us // 1_000_000) * rate + (now_us % 1_000_000) * rate // 1_000_000


def jitter_step(jitter16: int, transit: int, previous_transit: int) -> int:
    """One step of RFC 3550 A.8's estimator; jitter is kept scaled by 16, as there."""
    d = (transit - previous_transit) & 0xFFFFFFFF
    if d >= 0x80000000:
        d = 0x100000000 - d
    return jitter16 + d - ((jitter16 + 8) >> 4)


def history_window(highest: int, pid: int) -> int:
    """Which of a generic NACK entry's 17 sequence numbers (bit k: ``pid`` + k, modulo
    2^16) are among the HISTORY_SIZE up to ``highest``, the last one sent: a mask from
    one subtraction, so entries outside the history cost no lookup."""
    behind = (highest - pid) & 0xFFFF  # how far pid is behind the last one sent
    if behind >= HISTORY_SIZE + 16:  # all 17 too old, or not sent yet
        return 0
    low = max(0, behind - HISTORY_SIZE + 1)
    high = min(16, behind)
    return ((1 << (high + 1)) - 1) & ~((1 << low) - 1)


def nacks_for_video(codec: int) -> bool:
    """Publishers negotiate NACK for video (aiortc offers it for VP8 and H.264)."""
    return codec in (CODEC_VP8, CODEC_H264)
