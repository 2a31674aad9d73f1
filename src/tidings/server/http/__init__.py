"""HTTP handlers, one module per resource. Handlers parse and answer; services do the work."""
