"""netshrink.bench: data, training engine and the `bench` command line."""
__all__: list[str] = []
