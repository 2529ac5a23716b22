#!/usr/bin/env python
"""Django's command-line utility."""

import importlib.util
import os
import sys
from pathlib import Path


def use_running_dev_stack() -> None:
    """Use the services of a running `start_dev_tasks.py` (its .data/dev-services.env) for the variables set
    neither in the environment nor in .env, so `manage.py monitor_tasks` works from another terminal."""
    path = Path(__file__).resolve().parent / "finops" / "devstack.py"
    spec = importlib.util.spec_from_file_location("finops_devstack", path)
    devstack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = devstack  # its dataclasses look their module up there
    spec.loader.exec_module(devstack)
    devstack.services_file_apply(os.environ)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
    use_running_dev_stack()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
