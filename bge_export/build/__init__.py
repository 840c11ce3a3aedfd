"""Engine builders, one module per backend; the target registry is in targets.py."""
