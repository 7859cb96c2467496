#!/usr/bin/env bash
# Run every check of the project: setup, ruff, mypy, import-linter, pytest.
#
# Extra arguments go to pytest, e.g. `./scripts/test.sh tests/unit -k shim`.
# Every check runs even when an earlier one fails. The exit status is non-zero
# if any check failed, and a pytest run that collects no test counts as failed.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

if ! bash scripts/setup.sh; then
    echo "test: scripts/setup.sh failed; nothing was checked" >&2
    exit 1
fi

VENV_BIN="$REPO_ROOT/.venv/bin"
failed=()

run_check() {
    local name="$1"
    shift
    echo "test: $name: $*"
    if ! "$@"; then
        failed+=("$name")
    fi
}

run_check ruff "$VENV_BIN/ruff" check
run_check mypy "$VENV_BIN/mypy"
run_check import-linter "$VENV_BIN/lint-imports"

# Without path arguments pytest runs the testpaths of pyproject.toml (tests/).
echo "test: pytest: $VENV_BIN/pytest -p no:cacheprovider -rfEs $*"
"$VENV_BIN/pytest" -p no:cacheprovider -rfEs "$@"
pytest_status=$?
if [[ $pytest_status -eq 5 ]]; then
    echo "test: pytest collected no tests, which counts as a failure" >&2
    failed+=(pytest)
elif [[ $pytest_status -ne 0 ]]; then
    failed+=(pytest)
fi

if ((${#failed[@]} > 0)); then
    echo "test: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test: all checks passed"
