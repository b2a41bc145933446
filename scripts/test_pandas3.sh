#!/usr/bin/env bash
# The data tests again under pandas 3 (the main suite runs on the pinned pandas 2).
# pandas is unbounded in pyproject.toml, so users get 3.x; requirements.txt stays
# on 2.x. pandas 3 goes into its own folder (.venv-pandas3, installed once, no
# dependencies: it uses the venv's numpy and dateutil) and is put first on
# PYTHONPATH for this run only. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MIGT_VENV:-.venv}
PANDAS3_VERSION=3.1.1  # needs numpy >= 2.0.2 and Python >= 3.11: fits the pinned numpy 2.2
TARGET=.venv-pandas3
DATA_TESTS=(tests/test_dataset.py tests/test_features.py)

if [ ! -d "$TARGET/pandas-$PANDAS3_VERSION.dist-info" ]; then
  rm -rf "$TARGET"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$TARGET" "pandas==$PANDAS3_VERSION"
fi
# A stale or shadowed copy would silently test pandas 2 again.
PYTHONPATH="$TARGET" "$VENV/bin/python" -c "
import pandas, sys
if pandas.__version__ != '$PANDAS3_VERSION':
    sys.exit(f'expected pandas $PANDAS3_VERSION from $TARGET, got {pandas.__version__} from {pandas.__file__}')
"
echo "data tests under pandas $PANDAS3_VERSION:"
PYTHONPATH="$TARGET" exec "$VENV/bin/python" -m pytest "${DATA_TESTS[@]}" -q "$@"
