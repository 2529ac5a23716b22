# One image for every role: web (gunicorn), worker, beat, flower — the compose file picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them (every wheel is binary: no compiler needed).
COPY requirements/ requirements/
RUN pip install -r requirements/prod.txt

COPY . .

# Static files for the admin and the API docs, served by WhiteNoise from gunicorn (finops/wsgi.py).
# Throwaway values: collectstatic reads settings but touches no database, broker or secret.
RUN DEBUG=0 SECRET_KEY=collectstatic JWT_SECRET_KEY=collectstatic-jwt \
    ENCRYPTION_KEY=Y29sbGVjdHN0YXRpYy10aHJvd2F3YXkta2V5LTAwMDA= python manage.py collectstatic --noinput

RUN useradd --create-home --uid 1000 finops && chown -R finops /app
USER finops

EXPOSE 8000
CMD ["gunicorn", "finops.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "60", "--access-logfile", "-"]
