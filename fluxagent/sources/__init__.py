"""Read-only sources of facts: the platform database and this host."""
