"""The HTTP side: the server, its TLS and basic auth, the text format and health."""
