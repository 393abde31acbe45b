"""The last module the fork server preloads (``tests/forkserve.py``): what the preload built is
frozen out of the garbage collector's way before the first fork. Each forked ``ctrlplane serve``
collects and freezes its heap before serving (``serving.settle_heap``); with the preload's
objects already frozen that collection walks only what the child built itself (its app), instead
of the ~165,000 objects of the imports (about 45 ms of CPU at every server start of the suite)."""

import gc

gc.collect()
gc.freeze()
