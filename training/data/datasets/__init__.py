"""The labelled image benchmark: where its images come from and how the set is built.

`comfyui` (ComfyUI template thumbnails) and `generated` (OpenPeople, InvokeAI)
yield model outputs; `photos` yields real photographs from Debian, PyPI and npm
packages; `build` normalises, tags, de-duplicates and splits them (see
training.data.demo_data for the list of sources and the rules).
"""
