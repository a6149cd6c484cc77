"""Host-agnostic inference: loading, detection, tiling, precision, channels, resizing."""
