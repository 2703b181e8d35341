"""aiortc-based transport: peer connections, SDP shaping and the SRTP divert."""
