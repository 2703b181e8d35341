"""RTCP the SFU originates itself: sans-IO builders and machines (no sockets, no clock)."""
