"""WSGI entry point for gunicorn; in production it also serves the collected static files (WhiteNoise)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
application = get_wsgi_application()


def _with_static_files(app):
    """gunicorn serves no static files; WhiteNoise (requirements/prod.txt) does, once `collectstatic` has run.

    Off in DEBUG, where runserver serves them from the apps and a stale staticfiles/ must not shadow them.
    """
    from django.conf import settings

    if settings.DEBUG or not os.path.isdir(settings.STATIC_ROOT):
        return app
    try:
        from whitenoise import WhiteNoise
    except ImportError:  # dev installs without prod.txt
        return app
    return WhiteNoise(app, root=settings.STATIC_ROOT, prefix=settings.STATIC_URL)


application = _with_static_files(application)
