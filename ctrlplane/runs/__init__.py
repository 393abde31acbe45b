"""One-off runs, scheduled jobs and the release phase: one-shot containers of a release (see
``service.py`` for the rules, ``executor.py`` for how a run is carried out, ``scheduler.py`` for
how jobs fire exactly once across control-plane replicas)."""
