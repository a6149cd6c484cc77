"""Frame streams (`temporal`: feedback, stabiliser, scene cuts) and video files through PyAV
(`files`). May import: image, run, plan, compute, storage, errors.

The map of all engine folders is in DESIGN.md."""
