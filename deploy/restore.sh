#!/usr/bin/env bash
# Restore the Library API's database from a dump made by deploy/backup.sh. Destructive: every table of the
# service is replaced by the dump's contents, in one transaction (all or nothing).
#
#   deploy/restore.sh --yes backups/library-20250101T021700Z.dump
#       the Compose stack: stops the API, restores, migrates to the current schema, starts the API
#   DATABASE_URL=... deploy/restore.sh --yes FILE
#       any reachable database; stop the service's writers yourself first
#
# Uploaded covers: extract the matching uploads-*.tar.gz into the uploads volume (docs/deployment.md).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

confirmed=0
if [[ "${1:-}" == --yes ]]; then
    confirmed=1
    shift
fi
dump="${1:-}"
[[ -n "${dump}" ]] || die "usage: $0 --yes BACKUP_FILE"
[[ -f "${dump}" ]] || die "${dump}: no such file"
((confirmed)) || die "restoring replaces the database's contents: run again with --yes to confirm"

# The Compose files: those COMPOSE_FILE lists (Compose's own variable, `:`-separated, relative to the repository),
# e.g. compose.yaml:compose.mtls.yaml for client certificates at nginx; compose.yaml when it is unset.
compose_files=()
IFS=: read -r -a compose_names <<< "${COMPOSE_FILE:-compose.yaml}"
for name in "${compose_names[@]}"; do
    if [[ "${name}" == /* ]]; then compose_files+=(-f "${name}"); else compose_files+=(-f "${ROOT}/${name}"); fi
done
compose() { docker compose --project-directory "${ROOT}" "${compose_files[@]}" "$@"; }

if [[ -n "${DATABASE_URL:-}" ]]; then
    url="${DATABASE_URL/#postgresql+asyncpg:\/\//postgresql://}"
    pg_restore --list "${dump}" > /dev/null || die "${dump} is not a readable pg_dump archive"
    pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error --dbname="${url}" "${dump}"
else
    compose exec -T db pg_restore --list < "${dump}" > /dev/null || die "${dump} is not a readable pg_dump archive"
    printf 'stopping the API (clients are drained) ...\n'
    compose stop api
    # shellcheck disable=SC2016  # expanded by the container's shell, where the variables are set
    compose exec -T db sh -c 'pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error \
        -U "$POSTGRES_USER" -d "$POSTGRES_DB"' < "${dump}"
    # A dump from an older release is brought up to the current schema before the API serves again.
    compose run --rm --no-deps migrate
    compose up -d --no-build --wait --wait-timeout 300 api
fi
printf 'restored %s\n' "${dump}"
