"""`manage.py seed_demo`: create the demo organizations, people and fleet, once."""

from django.core.management.base import BaseCommand

from capacity import demo as capacity_demo
from marketplace import demo


class Command(BaseCommand):
    help = "Create demo organizations, users, sites and nodes (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        organizations = demo.seed_people()
        capacity_demo.seed_fleet(
            [organizations["partner"], capacity_demo.second_partner()], out=self.stdout
        )
        self.stdout.write(self.style.SUCCESS("demo data ready"))
