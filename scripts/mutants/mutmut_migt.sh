#!/usr/bin/env bash
# mutmut on the fast, pure-PyTorch modules of migt/, run in a throwaway copy of
# the committed tree (git archive HEAD), never in the working tree.
#
#   bash scripts/mutants/mutmut_migt.sh            # all modules below
#   MUTMUT_MODULES="migt/loss.py" bash scripts/mutants/mutmut_migt.sh
#
# mutmut (pinned, not a project dependency) is installed once with
# pip --target into $MUTMUT_TOOLS. The copy stays in $MUTMUT_WORKDIR, so
# `cd $MUTMUT_WORKDIR && PYTHONPATH=$MUTMUT_TOOLS $VENV/bin/python -m mutmut show <name>`
# shows a survivor afterwards. Each module's score is in
# $MUTMUT_WORKDIR/mutmut-results.txt (mutmut's own listing, one mutant a line).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=$ROOT/${MIGT_VENV:-.venv}
MUTMUT_VERSION=3.8.1
MUTMUT_TOOLS=${MUTMUT_TOOLS:-/tmp/mutmut-$MUTMUT_VERSION}
MUTMUT_WORKDIR=${MUTMUT_WORKDIR:-/tmp/migt-mutmut}
MUTMUT_CHILDREN=${MUTMUT_CHILDREN:-1}  # parallel mutants; CI machines have 2 cores
MODULES=${MUTMUT_MODULES:-"migt/loss.py migt/config.py migt/validation.py migt/heads.py migt/embedding.py migt/data/horizons.py migt/training/metrics.py migt/training/schedule.py"}
# The tests that cover these modules and run in seconds (mutmut maps each
# mutant to the tests that reach its function and runs only those).
TESTS="tests/test_loss.py tests/test_config.py tests/test_model.py tests/test_synthetic.py tests/test_dataset.py
tests/test_padding_extension.py tests/test_schedule_and_metrics.py tests/test_config_file.py tests/test_error_messages.py tests/test_input_bounds.py
tests/test_train.py::test_warmup_cosine_schedule tests/test_train.py::test_quantile_metrics_by_hand"
# Left out: the slowest cases (the triton backend under the interpreter, the
# model's padding-invariance and checkpointing tests: ~60 s together). A
# mutant that survives every test runs all of them, so on a shared 2-core
# machine they would cost an hour over a few hundred mutants. The kernel
# mutants (run_kernel_mutants.py) cover what they check.
DESELECT=${MUTMUT_DESELECT:-"not triton and not padding_invariance and not activation_checkpointing"}

if [ ! -d "$MUTMUT_TOOLS/mutmut-$MUTMUT_VERSION.dist-info" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --target "$MUTMUT_TOOLS" "mutmut==$MUTMUT_VERSION"
fi

rm -rf "$MUTMUT_WORKDIR"
mkdir -p "$MUTMUT_WORKDIR"
git archive HEAD | tar -x -C "$MUTMUT_WORKDIR"
cd "$MUTMUT_WORKDIR"
# A pytest plugin for mutmut's runs, copied into mutmut's mutants/ folder
# (on sys.path there):
# - forked test processes must not use torch's OpenMP threads: a child forked
#   after its parent started them waits on them forever (mutmut then reports
#   a "timeout" with 0 s of CPU time); conftest.py asks for 2, this sets 1;
# - mutmut selects tests by node id, and pytest cannot select an id holding
#   brackets (test_model.py's test_bad_input_errors ids are its regexes, e.g.
#   "\['day_of_year'\]"): every mutant reaching such a test ended as a
#   "timeout" (a usage error inside mutmut); this plugin writes those ids
#   with parentheses and without backslashes.
cat > mutmut_plugin.py <<'PY'
import torch


def pytest_runtest_setup(item):
    torch.set_num_threads(1)


def pytest_make_parametrize_id(config, val, argname):
    if isinstance(val, str) and any(c in val for c in "[]\\:"):
        return val.replace("\\", "").replace("[", "(").replace("]", ")").replace("::", ":")
    return None
PY
{
  echo "[mutmut]"
  echo "source_paths = migt"
  echo "only_mutate ="
  for m in $MODULES; do echo "    $m"; done
  echo "also_copy ="
  for p in kernels tests configs mutmut_plugin.py; do echo "    $p"; done
  echo "pytest_add_cli_args_test_selection ="
  for t in $TESTS; do [ -e "${t%%::*}" ] && echo "    $t"; done
  echo "pytest_add_cli_args ="
  echo "    -p"
  echo "    no:cacheprovider"
  echo "    -p"
  echo "    mutmut_plugin"
  echo "    -k"
  echo "    $DESELECT"
  echo "process_isolation = forkserver"  # keeps pytest and the tests out of mutmut's own process
} > setup.cfg
cat setup.cfg

export TRITON_INTERPRET=1
PYTHONPATH="$MUTMUT_TOOLS" "$VENV/bin/python" -m mutmut run --max-children "$MUTMUT_CHILDREN" || true
PYTHONPATH="$MUTMUT_TOOLS" "$VENV/bin/python" -m mutmut results --all true > mutmut-results.txt 2>&1 || \
  PYTHONPATH="$MUTMUT_TOOLS" "$VENV/bin/python" -m mutmut results > mutmut-results.txt 2>&1
# Per module: killed / total (mutmut's result names: killed, survived, no tests, timeout, ...)
"$VENV/bin/python" - <<'PY'
import collections, re
per = collections.defaultdict(collections.Counter)
for line in open("mutmut-results.txt"):
    m = re.match(r"\s*(migt\.[\w.]+?)\.x[_ǁ].*?:\s*(.+)$", line)
    if m:
        per[m.group(1)][m.group(2).strip()] += 1
for module, counts in sorted(per.items()):
    total = sum(counts.values())
    print(f"{module}: killed {counts['killed']}/{total}  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
PY
