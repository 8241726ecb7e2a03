#!/usr/bin/env bash
# Deploy the Library API with Docker Compose (default) or Kubernetes (DEPLOY_TARGET=kubernetes).
#
#   deploy/deploy.sh check      tools present, .env complete (no `change-me` left), certificates in place
#   deploy/deploy.sh build      build the image, tagged with the version and commit, and record the release
#   deploy/deploy.sh migrate    bring the database schema up to date (a one-off container / the migration Job)
#   deploy/deploy.sh test       the whole test suite of the checkout (make test)
#   deploy/deploy.sh seed       load the sample catalogue (only books not catalogued yet)
#   deploy/deploy.sh start      start or update the stack and wait until every service is healthy; with Compose,
#                               then give Prometheus a monitor API token if deploy/prometheus/scrape-token is empty
#   deploy/deploy.sh health     probe the running service through its public entry point
#   deploy/deploy.sh e2e        health, then a reader's journey through the entry point (register, log in,
#                               read the catalogue and their bookings): the release check of staging
#   deploy/deploy.sh full       check, build, test, migrate, start, health (SKIP_TESTS=1 skips test)
#   deploy/deploy.sh rollback   go back to the previous release (image) and check its health
#
# Settings (environment):
#   DEPLOY_TARGET       compose (default) or kubernetes
#   COMPOSE_FILE        Compose files, `:`-separated (default compose.yaml; compose.yaml:compose.mtls.yaml adds
#                       client certificates at nginx)
#   LIBRARY_API_IMAGE   image to run (default: the last one `build` recorded, else library-api:1.0.0)
#   K8S_OVERLAY         kustomize overlay for kubernetes (default deploy/k8s/overlays/production)
#   K8S_NAMESPACE       namespace for kubernetes (default library)
#   HEALTH_BASE_URL     public entry point for `health` (default https://localhost)
#   HEALTH_CA_FILE      CA bundle to verify the entry point's certificate with (default: the system's)
#   HEALTH_TOKEN        optional bearer token (a monitor API token) for /health/detailed
#   HEALTH_TIMEOUT      seconds `health` waits for readiness (default 60)
#   HEALTH_PUBLIC_ENTRY 1 (default): also check that /metrics is not served publicly
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${ROOT}/.deploy"
DEPLOY_TARGET="${DEPLOY_TARGET:-compose}"
K8S_OVERLAY="${K8S_OVERLAY:-${ROOT}/deploy/k8s/overlays/production}"
K8S_NAMESPACE="${K8S_NAMESPACE:-library}"
HEALTH_BASE_URL="${HEALTH_BASE_URL:-https://localhost}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-60}"
HEALTH_PUBLIC_ENTRY="${HEALTH_PUBLIC_ENTRY:-1}"

# Monitoring files Compose hands to Prometheus and Alertmanager as secrets (docs/deployment.md, "Metrics").
SCRAPE_TOKEN="${ROOT}/deploy/prometheus/scrape-token"
ALERTMANAGER_TEMPLATE="${ROOT}/deploy/alertmanager/alertmanager.yml"
ALERTMANAGER_CONFIG="${ROOT}/deploy/alertmanager/alertmanager.generated.yml"
# The webhook receiver's URL in alertmanager.yml, replaced by ALERTMANAGER_WEBHOOK_URL from .env.
WEBHOOK_PLACEHOLDER="https://alerts.example.invalid/library-api"

if [[ -t 1 ]]; then
    RED=$'\033[0;31m' GREEN=$'\033[0;32m' YELLOW=$'\033[1;33m' RESET=$'\033[0m'
else
    RED="" GREEN="" YELLOW="" RESET=""
fi

step() { printf '%s==> %s%s\n' "${YELLOW}" "$*" "${RESET}"; }
ok() { printf '%s ok %s%s\n' "${GREEN}" "$*" "${RESET}"; }
warn() { printf '%swarning: %s%s\n' "${YELLOW}" "$*" "${RESET}" >&2; }
die() {
    printf '%serror: %s%s\n' "${RED}" "$*" "${RESET}" >&2
    exit 1
}

# The Compose files: those COMPOSE_FILE lists (Compose's own variable, `:`-separated, relative to the repository),
# e.g. compose.yaml:compose.mtls.yaml for client certificates at nginx; compose.yaml when it is unset.
compose_files=()
IFS=: read -r -a compose_names <<< "${COMPOSE_FILE:-compose.yaml}"
for name in "${compose_names[@]}"; do
    if [[ "${name}" == /* ]]; then compose_files+=(-f "${name}"); else compose_files+=(-f "${ROOT}/${name}"); fi
done
compose() { docker compose --project-directory "${ROOT}" "${compose_files[@]}" "$@"; }

current_image() {
    if [[ -n "${LIBRARY_API_IMAGE:-}" ]]; then
        printf '%s\n' "${LIBRARY_API_IMAGE}"
    elif [[ -s "${STATE_DIR}/releases" ]]; then
        tail -n 1 "${STATE_DIR}/releases"
    else
        printf 'library-api:1.0.0\n'
    fi
}

# Value of KEY in the .env file (last assignment wins, surrounding quotes removed).
env_value() {
    local key="$1" line value=""
    while IFS= read -r line || [[ -n "${line}" ]]; do
        [[ "${line}" == "${key}="* ]] && value="${line#"${key}="}"
    done < "${ROOT}/.env"
    value="${value%\"}"
    value="${value#\"}"
    printf '%s' "${value}"
}

check_compose() {
    command -v docker > /dev/null || die "docker is not installed"
    docker compose version > /dev/null 2>&1 || die "the docker compose plugin (Compose v2) is not installed"
    [[ -f "${ROOT}/.env" ]] || die ".env is missing: cp .env.production.example .env, then set every secret"
    if [[ -n "$(find "${ROOT}/.env" -perm /077)" ]]; then
        warn ".env is readable by other users: chmod 600 .env"
    fi
    local key value problems=0
    for key in SECRET_KEY POSTGRES_PASSWORD REDIS_PASSWORD GRAFANA_ADMIN_PASSWORD; do
        value="$(env_value "${key}")"
        # the seed's .env names Grafana's password GRAFANA_PASSWORD; compose.yaml reads either
        [[ "${key}" == GRAFANA_ADMIN_PASSWORD && -z "${value}" ]] && value="$(env_value GRAFANA_PASSWORD)"
        if [[ -z "${value}" || "${value}" == "change-me" ]]; then
            printf '%serror: %s: set it in .env (still empty or change-me)%s\n' "${RED}" "${key}" "${RESET}" >&2
            problems=$((problems + 1))
        fi
    done
    value="$(env_value SECRET_KEY)"
    if [[ -n "${value}" && "${value}" != "change-me" && ${#value} -lt 32 ]]; then
        printf '%serror: SECRET_KEY: must be at least 32 characters%s\n' "${RED}" "${RESET}" >&2
        problems=$((problems + 1))
    fi
    local certs="${TLS_CERTS_DIR:-${ROOT}/deploy/nginx/certs}" files=(fullchain.pem privkey.pem)
    [[ ":${COMPOSE_FILE:-}:" == *:compose.mtls.yaml:* ]] && files+=(client-ca.pem)
    for key in "${files[@]}"; do
        if [[ ! -f "${certs}/${key}" ]]; then
            printf '%serror: TLS certificate file %s is missing (see docs/deployment.md, "TLS")%s\n' \
                "${RED}" "${certs}/${key}" "${RESET}" >&2
            problems=$((problems + 1))
        fi
    done
    if grep -qF "${WEBHOOK_PLACEHOLDER}" "${ALERTMANAGER_TEMPLATE}" && ! webhook_url_valid; then
        printf '%serror: ALERTMANAGER_WEBHOOK_URL: set it in .env to the http(s) URL alerts are delivered to%s\n' \
            "${RED}" "${RESET}" >&2
        problems=$((problems + 1))
    fi
    ((problems == 0)) || die "${problems} problem(s) to fix before deploying"
    if [[ -z "$(env_value ALLOWED_HOSTS)" ]]; then
        warn "ALLOWED_HOSTS is not set in .env: the service answers only to localhost and 127.0.0.1"
    fi
    prepare_monitoring_files
    compose config --quiet || die "the Compose files (${COMPOSE_FILE:-compose.yaml}) do not resolve with this .env"
    ok "environment checked"
}

webhook_url_valid() {
    [[ "$(env_value ALERTMANAGER_WEBHOOK_URL)" =~ ^https?://[^[:space:]\"\\]+$ ]]
}

# Compose's file secrets are bind mounts that keep the host file's owner and mode, and Prometheus and
# Alertmanager run as `nobody` (65534) in their images. So the file is readable by all (0644) and its directory
# is closed to the host's other users (0750) instead: a group of 65534 (0640) would need root to set and would
# not map through rootless Docker's user namespace, while this works with both.
# The file is written in place, never replaced: the running container holds the mounted inode, so a renamed
# new file would stay invisible to it.
write_secret_file() {
    local file="$1" content="$2"
    chmod 0750 "$(dirname "${file}")"
    [[ -f "${file}" ]] || : > "${file}"
    chmod 0644 "${file}"
    if [[ -n "${content}" ]]; then printf '%s\n' "${content}" > "${file}"; fi
}

# The scrape token file (empty until `start` fills it) and Alertmanager's configuration: alertmanager.yml with
# ALERTMANAGER_WEBHOOK_URL in place of the placeholder, rewritten only when it changes.
prepare_monitoring_files() {
    write_secret_file "${SCRAPE_TOKEN}" ""
    local config url
    config="$(< "${ALERTMANAGER_TEMPLATE}")"
    if [[ "${config}" == *"${WEBHOOK_PLACEHOLDER}"* ]]; then
        webhook_url_valid || die "ALERTMANAGER_WEBHOOK_URL: set it in .env to the http(s) URL alerts are delivered to"
        url="$(env_value ALERTMANAGER_WEBHOOK_URL)"
        config="${config//"${WEBHOOK_PLACEHOLDER}"/"${url}"}"
    fi
    if [[ ! -f "${ALERTMANAGER_CONFIG}" || "$(< "${ALERTMANAGER_CONFIG}")" != "${config}" ]]; then
        write_secret_file "${ALERTMANAGER_CONFIG}" "${config}"
        ok "Alertmanager configuration written (${ALERTMANAGER_CONFIG})"
    else
        write_secret_file "${ALERTMANAGER_CONFIG}" ""
    fi
}

# After the stack is up (migrations applied): a monitor API token for Prometheus, made with the service's own CLI
# in the api container, when the scrape token file is empty. Prometheus reads the file at every scrape, so
# nothing is restarted; a file that already holds a token is left alone (to replace it, empty the file and run
# `start` again, then revoke the old token with `library-api tokens revoke`).
provision_scrape_token() {
    write_secret_file "${SCRAPE_TOKEN}" ""
    if [[ -n "$(tr -d '[:space:]' < "${SCRAPE_TOKEN}")" ]]; then
        ok "Prometheus has its scrape token (${SCRAPE_TOKEN})"
        return
    fi
    step "creating Prometheus's scrape token (an API token with the monitor role)"
    local output token
    output="$(LIBRARY_API_IMAGE="$(current_image)" compose exec -T api \
        library-api tokens create --name prometheus --role monitor)" ||
        die "could not create the scrape token; run by hand: docker compose exec -T api library-api tokens create --name prometheus --role monitor > ${SCRAPE_TOKEN}"
    token="$(tail -n 1 <<< "${output}" | tr -d '[:space:]')"
    [[ "${token}" =~ ^lib_[A-Za-z0-9_-]+$ ]] || die "the api container answered no API token: ${output}"
    write_secret_file "${SCRAPE_TOKEN}" "${token}"
    ok "scrape token written to ${SCRAPE_TOKEN}: Prometheus uses it from its next scrape"
}

# A running Alertmanager keeps the configuration it read until told to read it again (SIGHUP). It is told only when
# the file differs from the one it was last told about (recorded in .deploy/), whichever command wrote it.
reload_alertmanager() {
    local digest recorded=""
    digest="$(sha256sum < "${ALERTMANAGER_CONFIG}")"
    digest="${digest%% *}"
    [[ -f "${STATE_DIR}/alertmanager-config.sha256" ]] && recorded="$(< "${STATE_DIR}/alertmanager-config.sha256")"
    [[ "${digest}" == "${recorded}" ]] && return
    if LIBRARY_API_IMAGE="$(current_image)" compose kill -s SIGHUP alertmanager > /dev/null; then
        mkdir -p "${STATE_DIR}"
        printf '%s\n' "${digest}" > "${STATE_DIR}/alertmanager-config.sha256"
        ok "Alertmanager told to read its configuration again"
    else
        warn "could not signal Alertmanager to read its new configuration: docker compose restart alertmanager"
    fi
}

check_kubernetes() {
    command -v kubectl > /dev/null || die "kubectl is not installed"
    kubectl version --request-timeout=10s > /dev/null || die "the cluster is not reachable"
    kubectl kustomize "${K8S_OVERLAY}" > /dev/null || die "${K8S_OVERLAY} does not render"
    kubectl -n "${K8S_NAMESPACE}" get secret library-api-secrets > /dev/null 2>&1 ||
        die "secret library-api-secrets is missing in ${K8S_NAMESPACE} (see deploy/k8s/base/shared/secret.template.yaml)"
    if kubectl kustomize "${K8S_OVERLAY}" | grep -q 'secretName: library-api-client-ca'; then
        kubectl -n "${K8S_NAMESPACE}" get secret library-api-client-ca > /dev/null 2>&1 ||
            die "secret library-api-client-ca (the client CA, key ca.crt) is missing in ${K8S_NAMESPACE} (see deploy/k8s/overlays/mtls)"
    fi
    ok "cluster and overlay checked"
}

check_environment() {
    step "checking the environment (${DEPLOY_TARGET})"
    case "${DEPLOY_TARGET}" in
        compose) check_compose ;;
        kubernetes) check_kubernetes ;;
        *) die "DEPLOY_TARGET must be compose or kubernetes (got ${DEPLOY_TARGET})" ;;
    esac
}

build_image() {
    step "building the image"
    command -v docker > /dev/null || die "docker is not installed"
    local version revision image
    version="$(sed -n 's/^version = "\(.*\)"/\1/p' "${ROOT}/pyproject.toml" | head -n 1)"
    revision="$(git -C "${ROOT}" rev-parse --short HEAD 2> /dev/null || printf 'local')"
    image="${LIBRARY_API_IMAGE:-library-api:${version}-${revision}}"
    docker build --pull -t "${image}" "${ROOT}"
    mkdir -p "${STATE_DIR}"
    if [[ "$(tail -n 1 "${STATE_DIR}/releases" 2> /dev/null)" != "${image}" ]]; then
        printf '%s\n' "${image}" >> "${STATE_DIR}/releases"
    fi
    ok "built ${image}"
}

run_migrations() {
    step "migrating the database"
    if [[ "${DEPLOY_TARGET}" == kubernetes ]]; then
        kubectl -n "${K8S_NAMESPACE}" delete job library-api-migrate --ignore-not-found
        kubectl kustomize "${K8S_OVERLAY}" |
            kubectl -n "${K8S_NAMESPACE}" apply -f - --selector app.kubernetes.io/component=migrate
        kubectl -n "${K8S_NAMESPACE}" wait --for=condition=complete --timeout=900s job/library-api-migrate ||
            die "the migration Job did not complete: kubectl -n ${K8S_NAMESPACE} logs job/library-api-migrate"
    else
        LIBRARY_API_IMAGE="$(current_image)" compose run --rm --no-build migrate
    fi
    ok "schema up to date"
}

run_tests() {
    step "running the test suite"
    make -C "${ROOT}" test
    ok "tests passed"
}

load_sample_data() {
    step "loading the sample catalogue"
    if [[ "${DEPLOY_TARGET}" == kubernetes ]]; then
        kubectl -n "${K8S_NAMESPACE}" exec deployment/library-api -- library-api seed
    else
        LIBRARY_API_IMAGE="$(current_image)" compose run --rm --no-build migrate library-api seed
    fi
    ok "sample catalogue loaded"
}

start_application() {
    step "starting the application"
    if [[ "${DEPLOY_TARGET}" == kubernetes ]]; then
        kubectl apply -k "${K8S_OVERLAY}"
        kubectl -n "${K8S_NAMESPACE}" rollout status deployment/library-api --timeout=900s ||
            die "the rollout did not finish: deploy/deploy.sh rollback returns to the previous release"
    else
        prepare_monitoring_files
        # --wait: returns once every service is running and healthy (or fails with the one that is not).
        LIBRARY_API_IMAGE="$(current_image)" compose up -d --no-build --remove-orphans --wait --wait-timeout 300 ||
            {
                compose logs --tail 50 migrate api nginx >&2 || true
                die "the stack did not become healthy"
            }
        provision_scrape_token
        reload_alertmanager
    fi
    ok "application started ($(current_image))"
}

# HTTP status of a GET through the entry point; extra arguments go to curl.
http_status() {
    local path="$1"
    shift
    local -a tls=()
    [[ -n "${HEALTH_CA_FILE:-}" ]] && tls=(--cacert "${HEALTH_CA_FILE}")
    curl --silent --show-error --output /dev/null --write-out '%{http_code}' --max-time 10 \
        "${tls[@]}" "$@" "${HEALTH_BASE_URL}${path}" || printf '000'
}

health_check() {
    step "checking health at ${HEALTH_BASE_URL}"
    command -v curl > /dev/null || die "curl is not installed"
    local status deadline failures=0
    deadline=$((SECONDS + HEALTH_TIMEOUT))
    until [[ "$(http_status /health/ready)" == 200 ]]; do
        ((SECONDS < deadline)) || die "/health/ready did not answer 200 within ${HEALTH_TIMEOUT} s"
        sleep 2
    done
    ok "/health/ready 200"

    # expected: one status or several separated by | (e.g. 200|401)
    check_status() {
        local expected="$1" path="$2" label="$3"
        shift 3
        status="$(http_status "${path}" "$@")"
        if [[ "|${expected}|" == *"|${status}|"* ]]; then
            ok "${label}: ${path} ${status}"
        else
            printf '%s FAIL %s: %s answered %s, expected %s%s\n' "${RED}" "${label}" "${path}" "${status}" \
                "${expected}" "${RESET}" >&2
            failures=$((failures + 1))
        fi
    }
    check_status 200 /health "liveness"
    check_status 200 /health/startup "startup"
    # The service's own authentication answers through the proxy: a 401 problem for an anonymous caller.
    check_status 401 /api/v1/auth/me "authentication required"
    if [[ -n "${HEALTH_TOKEN:-}" ]]; then
        check_status 200 /api/v1/books "catalogue (authenticated)" -H "Authorization: Bearer ${HEALTH_TOKEN}"
        check_status 200 /health/detailed "detailed health" -H "Authorization: Bearer ${HEALTH_TOKEN}"
    else
        # Public by default; 401 when ROLE_PERMISSIONS takes books:read away from anonymous callers.
        check_status "200|401" /api/v1/books "catalogue"
    fi
    if [[ "${HEALTH_PUBLIC_ENTRY}" == 1 ]]; then
        check_status 404 /metrics "metrics not public"
    fi

    local -a tls=()
    [[ -n "${HEALTH_CA_FILE:-}" ]] && tls=(--cacert "${HEALTH_CA_FILE}")
    local headers
    headers="$(curl --silent --max-time 10 --dump-header - --output /dev/null "${tls[@]}" "${HEALTH_BASE_URL}/health" || true)"
    if grep -qi '^x-request-id: ' <<< "${headers}"; then
        ok "responses carry X-Request-ID"
    else
        printf '%s FAIL responses carry no X-Request-ID%s\n' "${RED}" "${RESET}" >&2
        failures=$((failures + 1))
    fi

    if [[ "${HEALTH_BASE_URL}" == https://* ]] && command -v openssl > /dev/null; then
        local hostport="${HEALTH_BASE_URL#https://}"
        hostport="${hostport%%/*}"
        [[ "${hostport}" == *:* ]] || hostport="${hostport}:443"
        if openssl s_client -connect "${hostport}" -servername "${hostport%:*}" < /dev/null 2> /dev/null |
            openssl x509 -noout -checkend $((14 * 86400)) > /dev/null; then
            ok "TLS certificate valid for at least 14 more days"
        else
            warn "the TLS certificate expires within 14 days (or could not be read): renew it"
        fi
    fi
    ((failures == 0)) || die "${failures} health check(s) failed"
    ok "all health checks passed"
}

json_field() {
    # the string value of a top-level JSON member (enough for the service's token answers; no jq needed)
    sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" <<< "$2"
}

end_to_end_check() {
    health_check
    step "end-to-end check at ${HEALTH_BASE_URL}: a new reader's journey"
    local -a tls=()
    [[ -n "${HEALTH_CA_FILE:-}" ]] && tls=(--cacert "${HEALTH_CA_FILE}")
    local suffix email password answer token status
    suffix="$(date +%s)-${RANDOM}${RANDOM}"
    email="e2e-${suffix}@example.com"
    password="E2e-${suffix}-${RANDOM}${RANDOM}"
    request() {
        curl --silent --show-error --max-time 10 "${tls[@]}" --write-out '\n%{http_code}' "$@" || printf '\n000'
    }
    answer="$(request -H 'Content-Type: application/json' \
        --data "{\"email\":\"${email}\",\"password\":\"${password}\",\"full_name\":\"Release check\"}" \
        "${HEALTH_BASE_URL}/api/v1/auth/register")"
    [[ "${answer##*$'\n'}" == 201 ]] || die "registration answered ${answer##*$'\n'}: ${answer%$'\n'*}"
    ok "registered ${email}"
    answer="$(request --data-urlencode "username=${email}" --data-urlencode "password=${password}" \
        "${HEALTH_BASE_URL}/api/v1/auth/login")"
    [[ "${answer##*$'\n'}" == 200 ]] || die "login answered ${answer##*$'\n'}"
    token="$(json_field access_token "${answer%$'\n'*}")"
    [[ -n "${token}" ]] || die "login gave no access token"
    ok "logged in"
    answer="$(request -H "Authorization: Bearer ${token}" "${HEALTH_BASE_URL}/api/v1/auth/me")"
    [[ "${answer##*$'\n'}" == 200 && "$(json_field email "${answer%$'\n'*}")" == "${email}" ]] ||
        die "/api/v1/auth/me did not name the new reader (${answer##*$'\n'})"
    ok "/api/v1/auth/me names the new reader"
    for path in "/api/v1/books?limit=1" /api/v1/bookings; do
        status="$(http_status "${path}" -H "Authorization: Bearer ${token}")"
        [[ "${status}" == 200 ]] || die "${path} answered ${status} to the new reader"
        ok "${path} 200"
    done
    ok "end-to-end check passed"
}

rollback() {
    step "rolling back"
    if [[ "${DEPLOY_TARGET}" == kubernetes ]]; then
        kubectl -n "${K8S_NAMESPACE}" rollout undo deployment/library-api
        kubectl -n "${K8S_NAMESPACE}" rollout status deployment/library-api --timeout=900s
    else
        [[ -s "${STATE_DIR}/releases" ]] || die "no release recorded in ${STATE_DIR}/releases"
        local count previous
        count="$(wc -l < "${STATE_DIR}/releases")"
        ((count >= 2)) || die "only one release recorded: nothing to go back to"
        previous="$(tail -n 2 "${STATE_DIR}/releases" | head -n 1)"
        # The failed release leaves the history; the previous one becomes the current one again.
        sed -i '$d' "${STATE_DIR}/releases"
        # Migrations only move forward: the previous image must work with the current schema (expand first,
        # contract in a later release; docs/deployment.md).
        LIBRARY_API_IMAGE="${previous}" compose up -d --no-build --no-deps --wait --wait-timeout 300 api
    fi
    ok "rolled back to $(current_image)"
    health_check
}

main() {
    local command="${1:-}"
    case "${command}" in
        check) check_environment ;;
        build) build_image ;;
        migrate) run_migrations ;;
        test) run_tests ;;
        seed) load_sample_data ;;
        start) start_application ;;
        health) health_check ;;
        e2e) end_to_end_check ;;
        full)
            check_environment
            [[ "${DEPLOY_TARGET}" == compose ]] && build_image
            if [[ "${SKIP_TESTS:-0}" != 1 ]]; then run_tests; fi
            run_migrations
            start_application
            health_check
            ;;
        rollback) rollback ;;
        *)
            printf 'usage: %s {check|build|migrate|test|seed|start|health|e2e|full|rollback}\n' "$0" >&2
            exit 2
            ;;
    esac
}

main "$@"
