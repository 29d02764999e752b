#!/usr/bin/env bash
# Prepare a Docker engine and a PostgreSQL image for the testcontainers test backend,
# and print the image's name on standard output (progress goes to standard error):
#
#   RC_TEST_IMAGE="$(scripts/docker-postgres.sh)" RC_TEST_BACKEND=testcontainers \
#       TESTCONTAINERS_RYUK_DISABLED=true python -m pytest
#
# With Docker running and the image present (say the official postgres:16-alpine),
# it only says so. Otherwise, on Debian bookworm as root, even with no image registry
# reachable, it
#
#   1. installs the Debian package `docker.io` when no engine answers and dockerd is missing;
#   2. starts `dockerd` in the background when no engine answers;
#   3. builds an image that behaves like the official `postgres` one (POSTGRES_USER,
#      POSTGRES_PASSWORD, POSTGRES_DB; scram-sha-256 password authentication over
#      TCP; `sh` and `psql` inside, which testcontainers' readiness check runs;
#      port 5432) from debootstrap + postgresql-15 + an entrypoint + `docker import`
#      (about a minute; installs `debootstrap` first when missing), unless an image
#      with that name exists or can be pulled.
#
# Every step is skipped when already done, so running it twice is cheap.
#
# Environment:
#   RC_TEST_IMAGE      image to use; default: postgres:16-alpine when present,
#                      else rc-postgres:15-bookworm (built here when missing)
#   RC_DEBIAN_MIRROR   Debian mirror for debootstrap (default: the one apt uses)
#   RC_DOCKERD_LOG     where dockerd writes its log (default /var/log/rc-dockerd.log)
set -euo pipefail

OFFICIAL_IMAGE=postgres:16-alpine
BUILT_IMAGE=rc-postgres:15-bookworm
DOCKERD_LOG="${RC_DOCKERD_LOG:-/var/log/rc-dockerd.log}"
SUITE=bookworm

say() { printf '[docker-postgres] %s\n' "$*" >&2; }
die() { printf '[docker-postgres] ERROR: %s\n' "$*" >&2; exit 1; }
need_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 needs root; run this script as root"
}

# ------------------------------------------------------------------ 1. packages
apt_updated=
# Another apt run on the machine holds the lock for a while: wait for it, not fail.
APT_WAIT=(-o DPkg::Lock::Timeout=300)
apt_install() {
    need_root "installing $*"
    say "installing Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get "${APT_WAIT[@]}" update -q >&2 || die "apt-get update failed"
        apt_updated=yes
    fi
    apt-get "${APT_WAIT[@]}" install -y -q --no-install-recommends "$@" >&2 \
        || die "apt-get install $* failed"
}

if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io
fi

# ------------------------------------------------------------------ 2. engine
if docker info >/dev/null 2>&1; then
    say "a Docker engine answers"
else
    # No iptables: the machine may not allow it; the userland proxy still
    # publishes container ports on the host, which is all the tests need.
    need_root "starting dockerd"
    say "starting dockerd --iptables=false (log: $DOCKERD_LOG)"
    setsid dockerd --iptables=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 $! 2>/dev/null || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd exited"; }
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd did not answer within 60 s"; }
    say "dockerd is up (storage driver: $(docker info --format '{{.Driver}}'))"
fi

# ------------------------------------------------------------------ 3. image
has_image() { docker image inspect "$1" >/dev/null 2>&1; }

if [ -n "${RC_TEST_IMAGE:-}" ]; then
    IMAGE="$RC_TEST_IMAGE"
elif has_image "$OFFICIAL_IMAGE"; then
    IMAGE="$OFFICIAL_IMAGE"
else
    IMAGE="$BUILT_IMAGE"
fi
if has_image "$IMAGE"; then
    say "using image $IMAGE, already present"
    echo "$IMAGE"
    exit 0
fi
# Fails at once when no registry is reachable.
if docker pull -q "$IMAGE" >/dev/null 2>&1; then
    say "pulled image $IMAGE"
    echo "$IMAGE"
    exit 0
fi
need_root "building image $IMAGE"
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap

apt_mirror() {
    apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Identifier: Packages' 2>/dev/null \
        | awk -v s="$SUITE" '$1 == s { print $2; exit }'
}
mirror="${RC_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    # The mirror apt already uses for the main suite is the one known to be reachable.
    # apt lists it only once its package lists have been downloaded.
    mirror="$(apt_mirror)"
    if [ -z "$mirror" ] && [ -z "$apt_updated" ]; then
        apt-get "${APT_WAIT[@]}" update -q >&2 || die "apt-get update failed"
        apt_updated=yes
        mirror="$(apt_mirror)"
    fi
fi
[ -n "$mirror" ] || die "cannot tell which Debian mirror apt uses; set RC_DEBIAN_MIRROR"

work="$(mktemp -d /var/tmp/rc-postgres-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

say "debootstrap $SUITE with postgresql-15 from $mirror (about a minute)"
debootstrap --variant=minbase --include=postgresql-15 "$SUITE" "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

# The package's post-install created a cluster the image does not use; apt's caches,
# documentation and translations are dead weight in an image.
rm -rf "$rootfs/var/lib/postgresql/15/main" "$rootfs/etc/postgresql/15/main" \
    "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"* \
    "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/locale"

cat >"$rootfs/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# The official postgres image's contract, reduced to what clients rely on: on first
# start, create the cluster with POSTGRES_USER as superuser (password
# POSTGRES_PASSWORD, scram-sha-256 over TCP, trust on the local socket) and the
# database POSTGRES_DB; then run the server in the foreground on port 5432.
set -eu
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    chmod 2775 /run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "error: POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    {
        echo "host all all 0.0.0.0/0 scram-sha-256"
        echo "host all all ::/0 scram-sha-256"
    } >>"$PGDATA/pg_hba.conf"
    # Socket only while initialising, so TCP readiness checks wait for the real start.
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        # psql quotes the name (:"db"), but only in a script, not with -c.
        echo 'CREATE DATABASE :"db";' | psql -q -v ON_ERROR_STOP=1 \
            --username="$POSTGRES_USER" --dbname=postgres --set=db="$POSTGRES_DB"
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL init process complete; ready for start up."
fi

[ $# -gt 0 ] && shift
exec postgres -c listen_addresses='*' "$@"
ENTRYPOINT
chmod 755 "$rootfs/usr/local/bin/docker-entrypoint.sh"

say "importing the root filesystem as $IMAGE"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'EXPOSE 5432' \
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
    --change 'CMD ["postgres"]' \
    - "$IMAGE" >/dev/null || die "docker import failed"
say "built image $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE") bytes)"
echo "$IMAGE"
