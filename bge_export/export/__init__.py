"""torch -> ONNX export (dynamic axes, external data) and the post-export checks against torch."""
