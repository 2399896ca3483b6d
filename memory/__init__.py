"""Memory modules: what an agent can store and read back, with explicit state."""
