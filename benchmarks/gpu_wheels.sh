#!/usr/bin/env bash
# Wheels that the GPU image lacks, for benchmarks/gpu.sh (run this where pip reaches PyPI; the GPU
# machine reaches nothing). They land in .whl/ (git-ignored through .git/info/exclude); name `.whl` in
# the device call's `carry`, and gpu.sh installs them into /tmp/site before it starts.
# Versions: those of requirements/constraints.txt; Python 3.12 (the GPU image's), manylinux x86-64.
# The image's own pyarrow, fsspec, huggingface-hub and typing-extensions must meet datasets' and
# pydantic's floors (pyarrow>=24, fsspec<=2026.9.0, huggingface-hub>=1.31, typing-extensions>=4.16);
# check with `python3 -m pip show pyarrow fsspec huggingface-hub typing-extensions` there, and add a
# wheel here (EXTRA="pyarrow==26.0.1") for any that is older.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
WITH_BNB=${WITH_BNB:-1}
packages=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5
          annotated-types==0.8.0 typing-inspection==0.4.5 ${EXTRA:-})
if [ "$WITH_BNB" = 1 ]; then packages+=(bitsandbytes==0.50.2); fi
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${packages[@]}"
du -sh .whl
echo "carry .whl (the working tree plus carried paths must stay under 64 MiB)"
