"""Real Staging gateway: the public entry point (auth, provisioning, forwarding)."""
