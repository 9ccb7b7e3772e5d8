"""TLS pieces: ClientHello parsing (pure) and the SSL contexts the proxy uses."""
