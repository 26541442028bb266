"""Pure domain logic: the error tree, configuration model, size intents, the job fold and the router's decisions. No I/O."""
