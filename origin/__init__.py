"""origin: the primary inventory service, its storage, change feed and demo catalog."""
