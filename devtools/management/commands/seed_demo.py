"""`manage.py seed_demo`: create the demo organizations, people and fleet, once."""

from django.core.management.base import BaseCommand

from devtools.demo import books, compute, fleet, inference, people


class Command(BaseCommand):
    help = "Create demo organizations, users, sites and nodes (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        organizations = people.seed_people()
        partners = [organizations["partner"], fleet.second_partner()]
        fleet.seed_fleet(partners, out=self.stdout)
        # A closed past month (invoices paid and in dunning, statements, a payout, a credit
        # note) for every persona's journey: devtools/demo/books.py. Before the inference
        # line, so the demo buyer's contract begins before that month.
        books.seed_demo_books(organizations=organizations, partners=partners, out=self.stdout)
        demo_inference = inference.seed_inference(
            buyer=organizations["buyer"], partners=partners, out=self.stdout
        )
        self.stdout.write(
            f"inference: {demo_inference['serving_nodes']} node(s) serve the demo product, "
            f"{demo_inference['online_nodes']} online; "
            f"the demo key is in {demo_inference['key_file']}"
        )
        # Reserved GPUs to deploy a model on and an on-demand GPU line to start instances
        # on, which reach running within seconds: devtools/demo/compute.py.
        demo_compute = compute.seed_compute(
            buyer=organizations["buyer"], partner=organizations["partner"], out=self.stdout
        )
        sweep_seconds = compute.sweep_in_step()
        self.stdout.write(
            f"compute: reserved line {demo_compute['reserved_line']}, on-demand GPU line "
            f"{demo_compute['on_demand_line']}; the metering sweep runs every {sweep_seconds} s"
        )
        self.stdout.write(self.style.SUCCESS("demo data ready"))
