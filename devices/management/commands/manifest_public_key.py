"""Prints the public key devices pin to verify manifests."""

import json

from django.core.management.base import BaseCommand

from devices.manifests import public_key_info


class Command(BaseCommand):
    """`manage.py manifest_public_key [--json]`."""

    help = "Print the Ed25519 public key that signs device manifests (devices pin it)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="print key_id, algorithm and key as JSON")

    def handle(self, *args, **options) -> None:
        info = public_key_info()
        if options["json"]:
            self.stdout.write(json.dumps(info))
        else:
            self.stdout.write(f"{info['public_key']}\n(key_id {info['key_id']}, {info['algorithm']})")
