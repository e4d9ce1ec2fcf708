"""Data: labelled samples and manifests, the demo set and the datasets it is built from,
package downloads, the embedding cache and the feature log."""
