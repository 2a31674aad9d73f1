"""How a subscriber is served: SSE and WebSocket streams (polls live in http/channels.py)."""
