"""The demo ``make run`` seeds (``manage.py seed_demo``), idempotently.

- ``people``: the demo users and their buyer and partner organizations;
- ``fleet``: partner sites on four continents, nodes enrolled against the fleet
  simulator, and their offers;
- ``inference``: fleet nodes serving the demo product, the demo buyer's inference line
  and a ready key;
- ``books``: a closed past month (paid invoices, one in dunning, approved statements, a
  payout, a credit note) through the billing services and the Stripe emulation.

No Django import here: ``devtools.devrun`` prints the logins before Django is set up.
"""

DEMO_PASSWORD = "hashgrid-demo"  # noqa: S105 - the local demo's documented password
# The demo buyer's inference line serves this product; its key's plaintext is kept in
# this file (0600, under the checkout) so `make run` can print it with a curl line.
DEMO_INFERENCE_PRODUCT = "llama-3.1-8b-instruct"
DEMO_API_KEY_FILE = ".run/demo_api_key"
