#!/usr/bin/env bash
# Checks the configs that cannot run here, offline, as the tools that run them would:
#   Prometheus' config and alert rules (promtool check), the rules' unit tests (promtool test rules),
#   Alertmanager's config (amtool), docker-compose.yml (docker-compose config), the Dockerfile
#   (hadolint), and that compose mounts and scrape targets agree (scripts/check_compose.py).
# scripts/test.sh runs it; scripts/provision.sh installs the tools.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

promtool check config monitoring/prometheus/prometheus.yml
promtool check rules monitoring/prometheus/rules/*.yml
promtool test rules monitoring/prometheus/tests/*.yml
amtool check-config monitoring/alertmanager/alertmanager.yml
"$CHECKERS_VENV/bin/docker-compose" -f docker-compose.yml config -q
"$CHECKERS_VENV/bin/hadolint" Dockerfile
"$CHECKERS_VENV/bin/python" scripts/check_compose.py docker-compose.yml
log "configs: all checks passed"
