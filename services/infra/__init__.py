"""Infrastructure: the NATS/JetStream bus, blob store, embedded server, HTTP clients, media checks, logging and redaction."""
