# Sourced by the device_*.sh scripts that run from the repository root: strict mode, $OUT required, the package
# from src/, unbuffered output, $PY (PYTHON, default python); and `extract_data DIR`, which unpacks DIR from DIR.zip
# (carried to the device) when only the zip is there.
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}

extract_data() {
  if [ ! -d "$1/train" ] && [ -f "$1.zip" ]; then
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$1.zip" "$(dirname "$1")"
  fi
}
