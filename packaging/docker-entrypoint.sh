#!/bin/sh
# Entrypoint of the postroom container image (Dockerfile at the top of the repository).
#
# First start (no config yet): `postroom init` writes the config and data folder for
# POSTROOM_HOSTNAME (and POSTROOM_DOMAIN), on the standard ports, with `server.user` set:
# the server binds ports 25/465/587/143/993/110/995 as root inside the container and then
# runs as POSTROOM_USER. Then `serve` (the default command) or any other postroom command:
#   docker run ... postroom-image user add alice@example.org --generate
set -eu
CONFIG=${POSTROOM_CONFIG:-/etc/postroom/postroom.toml}
DATA_DIR=${POSTROOM_DATA_DIR:-/var/lib/postroom}
RUN_AS=${POSTROOM_USER:-postroom}
export POSTROOM_CONFIG="$CONFIG"

if [ ! -f "$CONFIG" ]; then
    if [ -z "${POSTROOM_HOSTNAME:-}" ]; then
        echo "postroom: set POSTROOM_HOSTNAME (this server's DNS name, e.g. mail.example.org) for the first start" >&2
        exit 2
    fi
    postroom init -c "$CONFIG" --hostname "$POSTROOM_HOSTNAME" --data-dir "$DATA_DIR" \
        --ports standard ${POSTROOM_DOMAIN:+--domain "$POSTROOM_DOMAIN"}
    printf '\n[server]\nuser = "%s"\n' "$RUN_AS" >> "$CONFIG"
    chown -R "$RUN_AS:" "$DATA_DIR"
fi

if [ "$#" -eq 0 ]; then
    set -- serve
fi
exec postroom -c "$CONFIG" "$@"
