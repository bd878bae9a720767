"""`opsdsl lint`: the engine that checks many packs at once, and its renderers (text, JSON,
SARIF, GitHub annotations)."""
