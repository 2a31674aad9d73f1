"""The Python SDK: Client, AsyncClient and Worker; it imports only tidings.protocol."""
