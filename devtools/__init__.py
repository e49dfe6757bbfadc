"""What only development, demos and benchmarks use, kept out of the product apps.

A Django app, installed outside production only (``config/settings.py``), that sits on
top of every product app: it may import any of them, and nothing imports it but config's
development wiring (the bench middleware and view under ``HASHGRID_BENCH_VIEWS``) and the
tests.

- ``devdb``: the embedded PostgreSQL server (``python -m devtools.devdb start|stop|…``).
- ``devrun``: ``make run`` (``python -m devtools.devrun``).
- ``demo``: the demo's people, organizations and fleet (``manage.py seed_demo``).
- ``bench``: the bench-only middleware and view (``HASHGRID_BENCH_VIEWS=1``).
- ``simulated_fleet``: the fleet simulator as a test bench (``bench_metering``, tests).
- ``race``: concurrent checkouts on real PostgreSQL (``bench_reserve``, tests).
- ``management/commands``: ``seed_demo``, ``bench_web``, ``bench_metering``,
  ``bench_reserve``, ``bench_close``.

``provision.sh`` installs what pip cannot for ``make test`` (Chromium, Redis).
"""
