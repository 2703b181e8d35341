"""Connection diagnostics: what a user's network does to WebRTC (``sfu doctor``)."""
