"""In-memory fakes of the scheduler's ports (``certbroker.ports``), for fake-clock tests.

They keep the ports' contracts (what each raises, idempotence) and record what
they were asked, so a test can say "the CA never heard of it" without Pebble.
"""
