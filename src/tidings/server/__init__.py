"""The server: composition root, dispatch, hub, services, HTTP, transports and stores."""
