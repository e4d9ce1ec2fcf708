"""The detector model (CLIP encoders + MLP head), its registry, and (later) the
robust loss, SAM and the Ray Train job."""
