"""The replica drill's hands inside Django (a long-lived process, like a web server; see driver.py): requests
through the real URL conf and middleware, and the writes the drill needs, done on the primary by the ORM.
"""

import json

from tests.reliability.driver import serve


def main() -> None:
    import django

    django.setup()

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.test import Client

    from costs_app.models import CostLineItem
    from finops.db_router import replica_reads
    from tests.factories import CloudAccountFactory, CostLineItemFactory

    user = get_user_model().objects.create_superuser("replica-drill", password="x")
    client = Client()
    client.force_login(user)

    def http(path: str, method: str = "get", data: dict | None = None, fresh: bool = False) -> dict:
        if fresh:  # a client that has not written lately (no "read the primary" cookie)
            client.cookies.pop("finops_primary", None)
        if method == "get":
            response = client.get(path)
        else:
            response = client.generic(method.upper(), path, json.dumps(data or {}), content_type="application/json")
        body = b"".join(response) if response.streaming else response.content
        return {"status": response.status_code, "body": body.decode(errors="replace")[:200_000]}

    def line(account: str, resource_id: str) -> int:
        return CostLineItemFactory(account=CloudAccountFactory(name=account), resource_id=resource_id).id

    def add_line(account: str, resource_id: str) -> int:
        from providers_app.models import CloudAccount

        return CostLineItemFactory(account=CloudAccount.objects.get(name=account), resource_id=resource_id).id

    def primary_has(resource_id: str) -> bool:
        return CostLineItem.objects.using("default").filter(resource_id=resource_id).exists()

    def read_write_read(resource_id: str, account: str) -> list[bool]:
        """In one replica-allowed scope (as a task or request): a read, a write, the same read again."""
        from providers_app.models import CloudAccount

        with replica_reads():
            before = CostLineItem.objects.filter(resource_id=resource_id).exists()
            CloudAccount.objects.filter(name=account).update(is_active=True)
            after = CostLineItem.objects.filter(resource_id=resource_id).exists()
        return [before, after]

    def set_setting(name: str, value) -> None:
        setattr(settings, name, value)

    commands = {
        "http": http,
        "line": line,
        "add_line": add_line,
        "primary_has": primary_has,
        "read_write_read": read_write_read,
        "set_setting": set_setting,
    }
    # Each command is one "request": its connections (primary and replica) go back to their pools.
    serve(commands, after=connections.close_all)


if __name__ == "__main__":
    main()
