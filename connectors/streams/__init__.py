"""Event streams: canonical events published to a broker by type, and a stream consumed as an inbound source."""
