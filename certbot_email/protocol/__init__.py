"""Protocol layer: pure value types and functions, no sockets, files or certbot."""
