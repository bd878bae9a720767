"""`opsdsl serve`: the HTTP service in front of the runtime."""
