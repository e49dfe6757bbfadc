"""`manage.py seed_demo`: create the demo organizations, people and fleet, once."""

from django.core.management.base import BaseCommand

from devtools.demo import fleet, people


class Command(BaseCommand):
    help = "Create demo organizations, users, sites and nodes (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        organizations = people.seed_people()
        fleet.seed_fleet([organizations["partner"], fleet.second_partner()], out=self.stdout)
        self.stdout.write(self.style.SUCCESS("demo data ready"))
