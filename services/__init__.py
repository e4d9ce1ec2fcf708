"""The plumbing every layer uses: errors, settings, records, URL fetching, image
decoding, Kafka clients, metrics, HTTP, polling, the embedded broker and reading
outputs. The bottom layer: it imports no other dmguard package
(docs/architecture.md, "Layout")."""
