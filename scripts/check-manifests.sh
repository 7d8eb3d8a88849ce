#!/usr/bin/env bash
# Validates manifests/ with scripts/check_manifests.py, using a python3 that has PyYAML
# (the first python3 on PATH, else Debian's, else PyYAML installed with pip), then against the
# Kubernetes API schemas with kubernetes-validate --strict (installed with pip when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

py=""
for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
        py="$candidate"
        break
    fi
done
if [ -z "$py" ]; then
    python3 -m pip install --quiet pyyaml
    py=python3
fi
"$py" scripts/check_manifests.py

# The Kubernetes API schemas, strictly (unknown fields are errors): kubernetes-validate from PyPI.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    "$py" -m pip install --quiet --break-system-packages kubernetes-validate ||
        "$py" -m pip install --quiet kubernetes-validate
fi
kubernetes-validate --strict --quiet manifests/*.yaml
echo "check-manifests: kubernetes-validate --strict passed"
