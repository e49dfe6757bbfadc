"""The demo ``make run`` seeds (``manage.py seed_demo``), idempotently.

- ``people``: the demo users and their buyer and partner organizations;
- ``fleet``: partner sites on four continents, nodes enrolled against the fleet
  simulator, and their offers.

No Django import here: ``devtools.devrun`` prints the logins before Django is set up.
"""

DEMO_PASSWORD = "hashgrid-demo"  # noqa: S105 - the local demo's documented password
