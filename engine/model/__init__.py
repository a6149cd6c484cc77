"""Loading: checkpoint bytes (`files`, after `pickle_scan`), architecture detection and building
(`loading`), ONNX sessions (`onnx_backend`), model folders (`catalog`), ONNX export (`export`).
May import: plan, compute, storage, errors, archs.

The map of all engine folders is in DESIGN.md."""
