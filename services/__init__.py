"""What dmguard's actors talk to and what users run: Kafka I/O and record
schemas, URL fetching and image decoding, the embedded broker, metrics,
configuration and the CLI."""
