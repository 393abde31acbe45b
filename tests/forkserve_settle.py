"""The last module the fork server preloads (``tests/forkserve.py``). It builds the app of a
server with the default ``max_body_bytes`` ahead (``ctrlplane.app.prebuild_app``: registering
every handler, about 0.3 s of CPU, was most of each forked server's start), then freezes what the
preload built out of the garbage collector's way before the first fork. Each forked ``ctrlplane
serve`` collects and freezes its heap before serving (``serving.settle_heap``); with the preload's
objects already frozen that collection walks only what the child built itself, instead of the
~165,000 objects of the imports (about 45 ms of CPU at every server start of the suite)."""

import gc

from ctrlplane.app import prebuild_app

prebuild_app()
gc.collect()
gc.freeze()
