"""`manage.py seed_demo`: create the demo organizations, people and fleet, once."""

from django.core.management.base import BaseCommand

from marketplace import demo


class Command(BaseCommand):
    help = "Create demo organizations, users, sites and nodes (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        demo.seed_people()
        self.stdout.write(self.style.SUCCESS("demo data ready"))
