"""Loopback fake upstreams that speak each provider's real wire format."""
