# One image for every role: web (gunicorn), workers, beat, flower, migrate — the compose file picks the command.
# Two stages: the dependencies are installed into a virtualenv in the first and only that virtualenv is copied into
# the second, so no pip cache, build tool or compiler ever reaches the final image (every wheel is binary anyway).

# Pinned to an exact Python patch release and Debian release: a rebuild gets the same interpreter.
FROM python:3.11.13-slim-bookworm AS deps

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
COPY requirements/ /tmp/requirements/
# requirements/prod.txt pins every direct dependency (base.txt plus gunicorn, whitenoise, flower);
# --only-binary: a missing wheel fails the build instead of pulling in a compiler.
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements/prod.txt \
    && /opt/venv/bin/pip uninstall -y pip


FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin finops
COPY --from=deps /opt/venv /opt/venv

WORKDIR /app
COPY --chown=finops:finops . .

USER finops

# Static files for the admin and the API docs, served by WhiteNoise from gunicorn (finops/wsgi.py).
# Throwaway values: collectstatic reads settings but touches no database, broker or secret.
RUN DEBUG=0 SECRET_KEY=collectstatic JWT_SECRET_KEY=collectstatic-jwt \
    ENCRYPTION_KEY=Y29sbGVjdHN0YXRpYy10aHJvd2F3YXkta2V5LTAwMDA= python manage.py collectstatic --noinput

EXPOSE 8000
# The web role's check; docker-compose.yml gives workers, beat and flower their own.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=5)"]
CMD ["gunicorn", "finops.wsgi:application", "--config", "python:finops.gunicorn_conf", "--bind", "0.0.0.0:8000", \
     "--workers", "2", "--threads", "8", "--timeout", "60", "--access-logfile", "-"]
