#!/usr/bin/env bash
# The README's second command (and CI's): set up .venv if needed, then run the test suite.
# pytest's exit code 5 ("no tests collected") is a failure here: a suite that runs nothing proves nothing.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" || exit 1
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
# every core, at most 4 (each worker holds its own tiny models and a real base); files stay whole on one worker
"$root/.venv/bin/python" -m pytest -q -n auto --maxprocesses 4 --dist loadfile "$@"
code=$?
if [ "$code" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$code"
