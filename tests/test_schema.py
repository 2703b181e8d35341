"""Control messages: the schema of docs/protocol.md (sfu/control/schema.py) and the codec."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.control import codec
from sfu.control.schema import (
    MAX_SDP_BYTES,
    MAX_TRACKS_PER_MESSAGE,
    SCHEMA,
    ProtocolError,
    validate,
)

PROTOCOL_MD = Path(__file__).parent.parent / "docs" / "protocol.md"
MAX_BYTES = 262_144  # config/sfu.toml's server.max_message_bytes

# Every client → server message in its smallest valid form.
MINIMAL: dict[str, dict[str, Any]] = {
    "join": {"type": "join", "room": "r", "name": "n"},
    "publish": {"type": "publish", "sdp": "v=0\r\n"},
    "answer": {"type": "answer", "sdp": "v=0\r\n"},
    "candidate": {"type": "candidate", "pc": "publish", "candidate": None},
    "subscribe": {"type": "subscribe", "tracks": ["t"]},
    "unsubscribe": {"type": "unsubscribe", "tracks": ["t"]},
    "restart": {"type": "restart"},
    "ping": {"type": "ping"},
    "leave": {"type": "leave"},
    "set_subscription": {"type": "set_subscription", "track": "t"},
    "mute": {"type": "mute", "track": "t", "muted": True},
    "unpublish": {"type": "unpublish", "track": "t"},
    "set_metadata": {"type": "set_metadata", "metadata": {}},
}

REQUIRED: dict[str, list[str]] = {
    "join": ["room", "name"],
    "publish": ["sdp"],
    "answer": ["sdp"],
    "candidate": ["pc", "candidate"],
    "subscribe": ["tracks"],
    "unsubscribe": ["tracks"],
    "restart": [],
    "ping": [],
    "leave": [],
    "set_subscription": ["track"],
    "mute": ["track", "muted"],
    "unpublish": ["track"],
    "set_metadata": ["metadata"],
}

CANDIDATE = {
    "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}

# Valid messages using the optional fields and forms.
WITH_OPTIONS: list[dict[str, Any]] = [
    {"type": "set_subscription", "track": "t", "max_width": 16384, "max_height": 0,
     "quality": "medium", "paused": True},
    {"type": "join", "room": "Room_1.a-b", "name": "Zoë 🎥", "token": "a.b.c"},
    {"type": "join", "room": "r", "name": "n", "token": None},
    {"type": "join", "room": "r" * 64, "name": "n" * 64, "token": "t" * 4096},
    {"type": "join", "room": "A-Za-z0-9_.-", "name": " "},
    {"type": "publish", "sdp": "s" * MAX_SDP_BYTES, "id": "publish-1"},
    {"type": "publish", "sdp": "v=0\r\n", "tracks": [
        {"mid": "0", "source": "screen", "name": "slides"}, {"mid": "1", "source": "camera"},
        {"mid": "2", "source": "screen_audio"}, {"mid": "3", "source": "microphone"}]},
    {"type": "set_metadata", "metadata": {"hand": True, "nested": {"a": [1, 2]}}},
    {"type": "answer", "sdp": "v=0\r\n", "id": 2**53 - 1},
    {"type": "candidate", "pc": "subscribe", "candidate": CANDIDATE},
    {"type": "candidate", "pc": "publish", "candidate": {"candidate": ""}},
    {"type": "candidate", "pc": "publish", "candidate": {"candidate": "c" * 1024}},
    {
        "type": "candidate",
        "pc": "publish",
        "candidate": {"candidate": "c", "sdpMid": None, "sdpMLineIndex": None},
    },
    {
        "type": "candidate",
        "pc": "publish",
        "candidate": {"candidate": "c", "sdpMLineIndex": 3, "usernameFragment": "u"},
    },
    {"type": "subscribe", "tracks": ["t" * 64] * MAX_TRACKS_PER_MESSAGE, "id": 0},
    {"type": "unsubscribe", "tracks": ["a", "b", "a"], "id": ""},
    {"type": "ping", "id": "x" * 64},
    {"type": "leave", "id": 17},
    # Unknown fields are ignored.
    {"type": "ping", "extra": {"anything": [1, 2, None]}},
    {"type": "join", "room": "r", "name": "n", "participant": 5, "tracks": "no"},
]

def cases(msg_types: tuple[str, ...], name: str, values: list[Any]) -> list[tuple[str, str, Any]]:
    return [(t, name, v) for t in msg_types for v in values]


# (type, field, a wrong value for it)
BAD_VALUES: list[tuple[str, str, Any]] = [
    ("set_subscription", "max_width", 16385),
    ("set_subscription", "max_height", -1),
    ("set_subscription", "max_width", True),
    ("set_subscription", "quality", "ultra"),
    ("set_subscription", "paused", "yes"),
    *cases(("join",), "room", [
        None, 1, True, ["r"], {"r": 1}, "", "r" * 65, "a b", "a/b", "ä", "r\n", "\nr", "r:1",
        "r\x00",
    ]),
    *cases(("join",), "name", [None, 1, False, ["n"], "", "n" * 65]),
    *cases(("join",), "token", [1, True, ["t"], {}, "", "t" * 4097]),
    *cases(
        ("publish", "answer"), "sdp",
        [None, 1, ["v=0"], {"sdp": "v=0"}, "", "s" * (MAX_SDP_BYTES + 1)],
    ),
    *cases(("candidate",), "pc", [None, "", "Publish", "both", 0, ["publish"], {}]),
    *cases(("candidate",), "candidate", [
        "candidate:1 1 udp 1 192.0.2.1 1 typ host",
        1,
        True,
        [],
        [CANDIDATE],
        {},
        {"sdpMid": "0", "sdpMLineIndex": 0},
        {"candidate": None},
        {"candidate": 1},
        {"candidate": "c" * 1025},
        {"candidate": "c", "sdpMid": 0},
        {"candidate": "c", "sdpMid": ["0"]},
        {"candidate": "c", "sdpMLineIndex": -1},
        {"candidate": "c", "sdpMLineIndex": "0"},
        {"candidate": "c", "sdpMLineIndex": 0.0},
        {"candidate": "c", "sdpMLineIndex": True},
        {"candidate": "c", "sdpMLineIndex": False},
    ]),
    *cases(("subscribe", "unsubscribe"), "tracks", [
        None, "t", 1, {"t": 1}, [], ["t"] * (MAX_TRACKS_PER_MESSAGE + 1), [""], ["t" * 65],
        [1], [None], [["t"]], ["t", 2],
    ]),
    *cases(("publish",), "tracks", [
        "screen", [], [{"mid": "0"}], [{"mid": "0", "source": "webcam"}],
        [{"mid": "", "source": "screen"}], [{"mid": 0, "source": "screen"}],
        [{"mid": "0", "source": "screen", "name": ""}],
        [{"mid": "0", "source": "screen", "name": "n" * 65}],
        [{"mid": "0", "source": "screen", "extra": 1}],
        [{"mid": "0", "source": "camera"}] * (MAX_TRACKS_PER_MESSAGE + 1),
    ]),
    *cases(("set_metadata",), "metadata", [None, "m", 1, [], ["a"], True]),
    *cases(("unpublish",), "track", [None, "", 1, "t" * 65]),
]


def rejected(message: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        validate(message)
    assert str(info.value)
    return info.value


def documented_client_types() -> list[str]:
    text = PROTOCOL_MD.read_text()
    section = text.split("## Client → server", 1)[1].split("## Server → client", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


# -- accepted messages ----------------------------------------------------------------


def test_schema_has_exactly_the_documented_client_messages() -> None:
    documented = documented_client_types()
    assert len(documented) == 13
    assert set(documented) == set(SCHEMA) == set(MINIMAL) == set(REQUIRED)


@pytest.mark.parametrize("msg_type", sorted(MINIMAL))
def test_minimal_message_is_accepted(msg_type: str) -> None:
    message = copy.deepcopy(MINIMAL[msg_type])
    assert validate(message) == MINIMAL[msg_type]
    assert message == MINIMAL[msg_type]  # not modified


@pytest.mark.parametrize("message", WITH_OPTIONS, ids=lambda m: str(m["type"]))
def test_message_with_optional_fields_is_accepted(message: dict[str, Any]) -> None:
    assert validate(copy.deepcopy(message)) == message


@pytest.mark.parametrize("msg_type", sorted(MINIMAL))
def test_id_is_accepted_on_every_type(msg_type: str) -> None:
    for msg_id in ("req-1", 42):
        message = {**MINIMAL[msg_type], "id": msg_id}
        assert validate(message) == message


# -- missing and wrong fields ---------------------------------------------------------


@pytest.mark.parametrize(
    ("msg_type", "name"), [(t, f) for t, fields in REQUIRED.items() for f in fields]
)
def test_missing_required_field_is_bad_field(msg_type: str, name: str) -> None:
    message = {k: v for k, v in MINIMAL[msg_type].items() if k != name}
    error = rejected(message)
    assert error.code == "bad_field"
    assert error.field == name
    assert name in str(error)


@pytest.mark.parametrize("msg_type", sorted(MINIMAL))
def test_missing_everything_names_the_first_required_field(msg_type: str) -> None:
    message = {"type": msg_type, "id": 1}
    if not REQUIRED[msg_type]:
        assert validate(message) == message
        return
    error = rejected(message)
    assert (error.code, error.field) == ("bad_field", REQUIRED[msg_type][0])


@pytest.mark.parametrize(("msg_type", "name", "value"), BAD_VALUES)
def test_wrong_value_is_bad_field(msg_type: str, name: str, value: Any) -> None:
    message = {**MINIMAL[msg_type], name: value}
    error = rejected(message)
    assert error.code == "bad_field", error
    assert error.field == name


@pytest.mark.parametrize("message", [{}, {"id": 1}, {"room": "r", "name": "n"}])
def test_missing_type_is_bad_field(message: dict[str, Any]) -> None:
    error = rejected(message)
    assert (error.code, error.field) == ("bad_field", "type")


@pytest.mark.parametrize("msg_type", [None, 1, True, ["join"], {"type": "join"}, b"join"])
def test_non_string_type_is_bad_field(msg_type: Any) -> None:
    error = rejected({"type": msg_type, "room": "r", "name": "n"})
    assert (error.code, error.field) == ("bad_field", "type")


@pytest.mark.parametrize(
    "msg_type",
    ["", "foo", "JOIN", "Join", " join", "join ", "joined", "offer", "error", "pong", "left",
     "participant_joined", "x" * 10_000],
)
def test_unknown_type(msg_type: str) -> None:
    error = rejected({"type": msg_type})
    assert error.code == "unknown_type"
    assert error.field == "type"
    assert len(str(error)) < 200  # a huge type is not echoed whole


@pytest.mark.parametrize(
    "message", [None, 0, 1.5, True, "join", b"join", [], [{"type": "ping"}], ["type", "ping"]]
)
def test_non_object_is_bad_message(message: Any) -> None:
    error = rejected(message)
    assert error.code == "bad_message"
    assert error.field is None


def test_protocol_error_carries_code_and_field() -> None:
    error = ProtocolError("bad_field", "room is wrong", "room")
    assert isinstance(error, ValueError)
    assert (error.code, error.field, str(error)) == ("bad_field", "room", "room is wrong")
    assert ProtocolError("bad_message", "no").field is None


# -- id -----------------------------------------------------------------------------


@pytest.mark.parametrize("msg_id", ["", "a", "x" * 64, "ünï", 0, 1, 2**31, 2**53 - 1])
def test_valid_ids(msg_id: str | int) -> None:
    message = {"type": "ping", "id": msg_id}
    assert validate(message) == message


@pytest.mark.parametrize(
    "msg_id", ["x" * 65, -1, 2**53, 2**64, True, False, None, 1.0, 1.5, [], ["a"], {}, b"a"]
)
def test_invalid_ids(msg_id: Any) -> None:
    for msg_type in ("ping", "join"):
        error = rejected({**MINIMAL[msg_type], "id": msg_id})
        assert (error.code, error.field) == ("bad_field", "id")


@given(st.integers())
def test_integer_id_range(msg_id: int) -> None:
    message = {"type": "ping", "id": msg_id}
    if 0 <= msg_id <= 2**53 - 1:
        assert validate(message) == message
    else:
        assert (rejected(message).code, rejected(message).field) == ("bad_field", "id")


@given(st.text(max_size=80))
def test_string_id_length(msg_id: str) -> None:
    message = {"type": "ping", "id": msg_id}
    if len(msg_id) <= 64:
        assert validate(message) == message
    else:
        assert rejected(message).field == "id"


# -- room names, sizes and bounds -----------------------------------------------------


@given(st.text(max_size=70))
def test_room_name_pattern(room: str) -> None:
    message = {"type": "join", "room": room, "name": "n"}
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
    if 1 <= len(room) <= 64 and set(room) <= allowed:
        assert validate(message) == message
    else:
        assert (rejected(message).code, rejected(message).field) == ("bad_field", "room")


@pytest.mark.parametrize("msg_type", ["publish", "answer"])
def test_sdp_size_limit(msg_type: str) -> None:
    assert validate({"type": msg_type, "sdp": "v" * MAX_SDP_BYTES})
    error = rejected({"type": msg_type, "sdp": "v" * (MAX_SDP_BYTES + 1)})
    assert (error.code, error.field) == ("bad_field", "sdp")
    assert MAX_SDP_BYTES == 64 * 1024


@pytest.mark.parametrize("msg_type", ["subscribe", "unsubscribe"])
def test_track_list_bounds(msg_type: str) -> None:
    assert MAX_TRACKS_PER_MESSAGE == 64
    for size in (1, 2, MAX_TRACKS_PER_MESSAGE):
        tracks = [f"t{i}" for i in range(size)]
        assert validate({"type": msg_type, "tracks": tracks})["tracks"] == tracks
    for tracks in ([], [f"t{i}" for i in range(MAX_TRACKS_PER_MESSAGE + 1)]):
        error = rejected({"type": msg_type, "tracks": tracks})
        assert (error.code, error.field) == ("bad_field", "tracks")
    assert validate({"type": msg_type, "tracks": ["t" * 64]})
    assert rejected({"type": msg_type, "tracks": ["t" * 65]}).field == "tracks"


def test_candidate_forms() -> None:
    end = {"type": "candidate", "pc": "subscribe", "candidate": None}
    assert validate(end) == end
    full = {"type": "candidate", "pc": "publish", "candidate": CANDIDATE}
    assert validate(full) == full
    for sdp_m_line_index in (0, 1, 2**31):
        candidate = {**CANDIDATE, "sdpMLineIndex": sdp_m_line_index}
        assert validate({**full, "candidate": candidate})
    error = rejected({**full, "candidate": {**CANDIDATE, "sdpMLineIndex": True}})
    assert (error.code, error.field) == ("bad_field", "candidate")
    error = rejected({**full, "pc": "both"})
    assert (error.code, error.field) == ("bad_field", "pc")


# -- any message validates or raises ProtocolError ------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    ["type", "id", "room", "name", "token", "sdp", "pc", "candidate", "tracks", "other"]
)


@st.composite
def near_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with a few fields replaced, removed or added."""
    message = dict(draw(st.sampled_from([*MINIMAL.values(), *WITH_OPTIONS])))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(FIELD_NAMES)
        if draw(st.booleans()):
            message.pop(name, None)
        else:
            message[name] = draw(JSON_VALUES | st.sampled_from(sorted(SCHEMA)))
    return message


@settings(max_examples=500)
@given(near_messages())
def test_near_valid_messages_validate_or_raise_protocol_error(message: dict[str, Any]) -> None:
    try:
        result = validate(message)
    except ProtocolError as exc:
        assert exc.code in {"bad_field", "unknown_type"}
        assert isinstance(exc.field, str)
        return
    assert result is message
    spec = SCHEMA[message["type"]]
    assert set(spec[0]) <= set(message)


# -- codec --------------------------------------------------------------------------

SAMPLES: list[dict[str, Any]] = [
    *MINIMAL.values(),
    *WITH_OPTIONS,
    {
        "type": "joined",
        "id": 1,
        "participant": {"id": "p1", "name": "Zoë"},
        "participants": [],
        "tracks": [{"id": "t", "participant": "p2", "kind": "video"}],
        "ice_servers": [{"urls": ["stun:stun.example.org"], "username": "u", "credential": "c"}],
    },
    {"type": "error", "code": "bad_field", "message": "x", "field": "room", "ref": "join"},
    {"type": "nested", "a": [1, -1, 2**53, 1.5, -0.25, True, False, None, "", {"b": {"c": []}}]},
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: str(m["type"]))
def test_json_and_msgpack_round_trip(message: dict[str, Any]) -> None:
    text = codec.encode(message, binary=False)
    assert isinstance(text, str)
    assert json.loads(text) == message
    assert codec.decode(text, MAX_BYTES) == message
    packed = codec.encode(message, binary=True)
    assert isinstance(packed, bytes)
    assert msgpack.unpackb(packed, raw=False) == message
    assert codec.decode(packed, MAX_BYTES) == message


@given(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6))
def test_round_trip_of_any_json_object(message: dict[str, Any]) -> None:
    text = codec.encode(message, binary=False)
    packed = codec.encode(message, binary=True)
    assert codec.decode(text, 10**7) == message
    assert codec.decode(packed, 10**7) == message


def test_strings_are_json_bytes_are_msgpack() -> None:
    assert codec.decode('{"type":"ping"}', MAX_BYTES) == {"type": "ping"}
    assert codec.decode(msgpack.packb({"type": "ping"}), MAX_BYTES) == {"type": "ping"}
    # JSON in a binary frame is not JSON.
    with pytest.raises(ProtocolError) as info:
        codec.decode(b'{"type":"ping"}', MAX_BYTES)
    assert info.value.code == "bad_message"


def test_decode_returns_non_objects_for_validate_to_refuse() -> None:
    for frame in ("[]", "1", '"ping"', "null", msgpack.packb([1, 2]), msgpack.packb("x")):
        error = rejected(codec.decode(frame, MAX_BYTES))
        assert error.code == "bad_message"


@pytest.mark.parametrize(
    "frame",
    ["", " ", "{", "}", "{'type': 'ping'}", '{"type": "ping",}', '{"type": "ping"} x',
     '{"type": ping}', "nul", "NaN", '{"a": NaN}', '"\ud800"', '{"\udfff": 1}', "[" * 5000],
)
def test_invalid_json_is_bad_message(frame: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame, 10**6)
    assert info.value.code == "bad_message"
    assert info.value.field is None


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # nothing
        b"\xc1",  # never used
        b"\x81",  # map without its entry
        b"\x81\xa4type",  # map without the value
        b"\x92\x01",  # array one short
        b"\xa5ab",  # short string
        b"\x80\x80",  # extra data after the object
        b"\x81\x01\x01",  # integer map key
        b"\x81\x90\x01",  # array map key
        b"\xc4\x01a",  # bin
        b"\xd4\x01\x00",  # ext
        b"\xd6\xff\x00\x00\x00\x00",  # timestamp ext
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\x91" * 5000 + b"\xc0",  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # a huge array announced, not sent
        b"\xdb\xff\xff\xff\xff",  # a huge string announced, not sent
    ],
)
def test_invalid_msgpack_is_bad_message(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame, 10**6)
    assert info.value.code == "bad_message"


def test_msgpack_only_values_never_pass_as_fields() -> None:
    """Empty bin and ext slip through msgpack's limits; validate still refuses them."""
    for value in (b"", msgpack.ExtType(5, b"")):
        frame = msgpack.packb({"type": "join", "room": value, "name": "n"}, use_bin_type=True)
        error = rejected(codec.decode(frame, MAX_BYTES))
        assert (error.code, error.field) == ("bad_field", "room")
        frame = msgpack.packb({"type": "ping", "id": value}, use_bin_type=True)
        assert rejected(codec.decode(frame, MAX_BYTES)).field == "id"


def test_oversize_frame_is_bad_message() -> None:
    limit = 1024
    fits = '{"type":"ping","pad":"' + "x" * (limit - 24) + '"}'
    assert len(fits) == limit
    assert codec.decode(fits, limit)["type"] == "ping"
    with pytest.raises(ProtocolError) as info:
        codec.decode(fits[:-2] + 'x"}', limit)
    assert info.value.code == "bad_message"

    overhead = len(msgpack.packb({"type": "ping", "pad": "x" * 1000})) - 1000
    packed_fits = msgpack.packb({"type": "ping", "pad": "x" * (limit - overhead)})
    assert len(packed_fits) == limit
    assert codec.decode(packed_fits, limit)["type"] == "ping"
    with pytest.raises(ProtocolError) as info:
        codec.decode(packed_fits + b"\x00", limit)
    assert info.value.code == "bad_message"
    assert str(limit) in str(info.value)


def test_oversize_limit_counts_bytes_of_text() -> None:
    """The limit is in bytes (server.max_message_bytes) for text frames too."""
    limit = 1024
    text = '{"type":"ping","pad":"' + "é" * 600 + '"}'  # 624 characters, 1224 bytes
    assert len(text) <= limit < len(text.encode())
    with pytest.raises(ProtocolError) as info:
        codec.decode(text, limit)
    assert info.value.code == "bad_message"
    fits = '{"type":"ping","pad":"' + "é" * 500 + '"}'  # 1024 bytes
    assert len(fits.encode()) == limit
    assert codec.decode(fits, limit)["type"] == "ping"


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(frame: bytes) -> None:
    try:
        validate(codec.decode(frame, 256))
    except ProtocolError as exc:
        assert exc.code in {"bad_message", "bad_field", "unknown_type"}


@settings(max_examples=1000)
@given(st.text(st.characters(exclude_categories=()), max_size=300))
def test_arbitrary_text_raises_only_protocol_error(frame: str) -> None:
    try:
        validate(codec.decode(frame, 256))
    except ProtocolError as exc:
        assert exc.code in {"bad_message", "bad_field", "unknown_type"}


@settings(max_examples=500)
@given(st.lists(st.sampled_from(['{', '}', '[', ']', '"type"', ":", ",", '"join"', '"room"',
                                 '"r"', '"name"', '"id"', "1", "-1", "1e400", "null", "true",
                                 '"\\ud800"', '"\\u0000"', " ", '"\udc00"', "é"]),
                max_size=30))
def test_json_like_text_raises_only_protocol_error(parts: list[str]) -> None:
    try:
        validate(codec.decode("".join(parts), MAX_BYTES))
    except ProtocolError as exc:
        assert exc.code in {"bad_message", "bad_field", "unknown_type"}


@settings(max_examples=500)
@given(JSON_VALUES)
def test_any_msgpack_value_raises_only_protocol_error(value: Any) -> None:
    frame = msgpack.packb(value, use_bin_type=True)
    try:
        validate(codec.decode(frame, MAX_BYTES))
    except ProtocolError as exc:
        assert exc.code in {"bad_message", "bad_field", "unknown_type"}
