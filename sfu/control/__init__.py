"""The WebSocket control channel: message schema, encodings, and the aiohttp session."""
