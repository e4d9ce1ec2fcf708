"""The model and learning: everything from an image's pixels to a registered, evaluated
head, grouped by stage. `model` (encoders, head, detector, registry), `learning`
(settings, loss, SAM, the Ray Train job, retraining), `evaluation` (metrics, the
leave-source-out benchmark) and `data` (samples, the demo set, the embedding cache,
the feature log); `errors` is shared by all four."""
