"""The actors and their runtime: the durable pull consumer, the router, the provider actor."""
