"""netshrink.models: the model zoo (being built)."""
__all__: list[str] = []
