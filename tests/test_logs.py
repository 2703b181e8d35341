from __future__ import annotations

import logging

import orjson

from sfu.logs import JsonFormatter, PlainFormatter


def record(**extra: str) -> logging.LogRecord:
    item = logging.LogRecord("sfu.server", logging.INFO, __file__, 1, "joined %s", ("x",), None)
    for key, value in extra.items():
        setattr(item, key, value)
    return item


def test_plain_lines_carry_context() -> None:
    line = PlainFormatter().format(record(room="r1", participant="PA_1"))
    assert line.endswith("INFO sfu.server [room=r1 participant=PA_1]: joined x")
    assert "[" not in PlainFormatter().format(record())


def test_json_lines() -> None:
    line = orjson.loads(JsonFormatter().format(record(room="r1")))
    assert line["message"] == "joined x" and line["room"] == "r1"
    assert line["level"] == "info" and line["logger"] == "sfu.server"
    assert "participant" not in line and line["ts"].endswith("Z")
