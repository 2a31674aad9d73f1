"""The wire, pure (msgspec and the standard library): shared by the server and the SDK."""
