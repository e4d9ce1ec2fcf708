"""The plumbing every layer uses (errors, settings, records, URL fetching, image
decoding, Kafka clients, metrics, HTTP, polling, the embedded broker, reading
outputs), in the top-level modules; and, in `services.cli`, the programs on top
of everything. Imports go one way: docs/architecture.md, "Layout"."""
