"""Micro-benchmarks run with the allocator setting the bench CLI uses (engine/host.py): without
it, page faults on re-allocated activation buffers dominate a CPU training step and blur the
ratios these benchmarks report."""

from netshrink.bench.engine.host import keep_freed_memory

keep_freed_memory()
