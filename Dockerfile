# postroom in a container (docs/deployment.md, "Docker"). The container starts as root,
# binds the standard mail ports and switches to the user `postroom` (config server.user);
# the data folder is a volume. Not built by the test suite (no Docker engine there): the
# entrypoint is tested directly (tests/packaging/test_packaging.py).
#
#   docker build -t postroom .
#   docker run -d --name postroom -e POSTROOM_HOSTNAME=mail.example.org \
#       -e POSTROOM_DOMAIN=example.org -v postroom-data:/var/lib/postroom \
#       -v postroom-etc:/etc/postroom -p 25:25 -p 465:465 -p 587:587 -p 993:993 -p 995:995 postroom
#   docker exec -u postroom postroom postroom user add alice@example.org --generate
FROM python:3.11-slim-bookworm

RUN useradd --system --home-dir /var/lib/postroom --shell /usr/sbin/nologin postroom \
    && mkdir -p /etc/postroom /var/lib/postroom \
    && chown postroom:postroom /var/lib/postroom && chmod 0700 /var/lib/postroom

COPY pyproject.toml README.md /src/
COPY src /src/src
# [s3]: the S3 client, for store.blob_store = "s3" (PostgreSQL nodes).
RUN pip install --no-cache-dir "/src[s3]" && rm -rf /src
COPY packaging/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

VOLUME ["/var/lib/postroom", "/etc/postroom"]
EXPOSE 25 465 587 143 993 110 995 80 443
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["serve"]
