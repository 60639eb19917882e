"""``python -m netshrink.bench`` (what torchrun launches) runs the ``bench`` CLI."""

from netshrink.bench.cli import main

if __name__ == "__main__":
    main()
