#!/usr/bin/env bash
# Back up the Library API: a pg_dump of the database (custom format, checked by reading it back) and an
# archive of the uploaded cover images, kept for BACKUP_RETENTION_DAYS days.
#
#   deploy/backup.sh                      the Compose stack's database and uploads volume
#   DATABASE_URL=... deploy/backup.sh     any reachable database (postgresql:// or postgresql+asyncpg://),
#                                         with UPLOAD_DIR=... to archive a local uploads directory as well
#
# Settings: BACKUP_DIR (default ./backups), BACKUP_RETENTION_DAYS (default 14).
# Restore: deploy/restore.sh BACKUP_FILE (see docs/deployment.md, "Backups and restore").
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BACKUP_DIR="${BACKUP_DIR:-${ROOT}/backups}"
BACKUP_RETENTION_DAYS="${BACKUP_RETENTION_DAYS:-14}"

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

[[ "${BACKUP_RETENTION_DAYS}" =~ ^[0-9]+$ ]] || die "BACKUP_RETENTION_DAYS must be a whole number of days"
mkdir -p "${BACKUP_DIR}"
chmod 700 "${BACKUP_DIR}"
umask 077

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
dump="${BACKUP_DIR}/library-${stamp}.dump"
trap 'rm -f "${dump}.part" "${BACKUP_DIR}/uploads-${stamp}.tar.gz.part"' EXIT

# The Compose files: those COMPOSE_FILE lists (Compose's own variable, `:`-separated, relative to the repository),
# e.g. compose.yaml:compose.mtls.yaml for client certificates at nginx; compose.yaml when it is unset.
compose_files=()
IFS=: read -r -a compose_names <<< "${COMPOSE_FILE:-compose.yaml}"
for name in "${compose_names[@]}"; do
    if [[ "${name}" == /* ]]; then compose_files+=(-f "${name}"); else compose_files+=(-f "${ROOT}/${name}"); fi
done
compose() { docker compose --project-directory "${ROOT}" "${compose_files[@]}" "$@"; }

if [[ -n "${DATABASE_URL:-}" ]]; then
    # The service's URL names its driver (postgresql+asyncpg://); libpq wants postgresql://.
    url="${DATABASE_URL/#postgresql+asyncpg:\/\//postgresql://}"
    pg_dump --format=custom --no-owner --dbname="${url}" --file="${dump}.part"
    pg_restore --list "${dump}.part" > /dev/null || die "the dump does not read back"
    if [[ -n "${UPLOAD_DIR:-}" && -d "${UPLOAD_DIR}" ]]; then
        tar -C "${UPLOAD_DIR}" -czf "${BACKUP_DIR}/uploads-${stamp}.tar.gz.part" .
        mv "${BACKUP_DIR}/uploads-${stamp}.tar.gz.part" "${BACKUP_DIR}/uploads-${stamp}.tar.gz"
    fi
else
    # Inside the database container, as its own user; the dump streams out to this host.
    # shellcheck disable=SC2016  # expanded by the container's shell, where the variables are set
    compose exec -T db sh -c 'pg_dump --format=custom --no-owner -U "$POSTGRES_USER" -d "$POSTGRES_DB"' > "${dump}.part"
    compose exec -T db pg_restore --list < "${dump}.part" > /dev/null || die "the dump does not read back"
    compose run --rm --no-deps -T --entrypoint tar api -C /app/uploads -czf - . \
        > "${BACKUP_DIR}/uploads-${stamp}.tar.gz.part"
    mv "${BACKUP_DIR}/uploads-${stamp}.tar.gz.part" "${BACKUP_DIR}/uploads-${stamp}.tar.gz"
fi
mv "${dump}.part" "${dump}"
printf 'backup written: %s (%s bytes)\n' "${dump}" "$(wc -c < "${dump}")"

# Retention: older dumps and archives go; the one just written always stays.
find "${BACKUP_DIR}" -maxdepth 1 -type f \( -name 'library-*.dump' -o -name 'uploads-*.tar.gz' \) \
    -mtime "+${BACKUP_RETENTION_DAYS}" -print -delete | sed 's/^/removed (older than retention): /'
