#!/usr/bin/env bash
# Run tirex as a 64-bit ARM machine would, on an x86 Debian/Ubuntu machine: an arm64 CPython from the
# distribution's arm64 packages, torch and the other wheels for aarch64 from PyPI, all under qemu-user. The
# whole package runs there - dispatch, kernel build (the cross compiler, as g++), loading, forecasts - so ARM
# gets more than the kernel-only check of the tests (test_cpu_dispatch: the portable level's bits under
# qemu-user). Speed under emulation means nothing; correctness does.
#
# Usage:  sudo bash scripts/arm64_emulated.sh [pytest arguments]     (default: the dispatch and parity tests)
#         sudo bash scripts/arm64_emulated.sh --python -c "import tirex; print(tirex.load_model().backend_info())"
# Needs root (arm64 packages, and binfmt_misc so that the emulated Python can start emulated children: the
# kernel's SIGILL pre-check, the CLI and server tests), apt, and network access to the package archive and PyPI.
# Everything goes to $ARM64_ROOT (default .cache/arm64, about 1.5 GB); a second run reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${ARM64_ROOT:-$PWD/.cache/arm64}"
TORCH="${ARM64_TORCH:-2.9.1}"  # a CPU build on PyPI for aarch64 (newer aarch64 wheels there are CUDA builds)

if [ ! -x "$ROOT/bin/python" ]; then
  [ "$(id -u)" = 0 ] || { echo "needs root the first time (arm64 packages, binfmt_misc)" >&2; exit 1; }
  apt-get install -y -q --no-install-recommends qemu-user g++-aarch64-linux-gnu >/dev/null
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -q >/dev/null
  # the distribution's default Python 3, as arm64 packages, unpacked (never installed) into $ROOT/sysroot
  py=$(apt-cache depends python3-minimal:arm64 | grep -o 'python3\.[0-9]*-minimal' | head -1)
  py=${py%-minimal}
  mkdir -p "$ROOT/debs" "$ROOT/sysroot" "$ROOT/bin"
  (cd "$ROOT/debs" && apt-get download \
    "$py-minimal:arm64" "lib$py-minimal:arm64" "lib$py-stdlib:arm64" "$py:arm64" libc6:arm64 libexpat1:arm64 \
    zlib1g:arm64 libssl3:arm64 libffi8:arm64 libbz2-1.0:arm64 liblzma5:arm64 libsqlite3-0:arm64 \
    libncursesw6:arm64 libtinfo6:arm64 libreadline8:arm64 libuuid1:arm64 libgcc-s1:arm64 libstdc++6:arm64 \
    libgomp1:arm64 libcrypt1:arm64 libnsl2:arm64 libtirpc3:arm64 libgssapi-krb5-2:arm64 libkrb5-3:arm64 \
    libk5crypto3:arm64 libkrb5support0:arm64 libcom-err2:arm64 libkeyutils1:arm64 >/dev/null)
  for deb in "$ROOT"/debs/*.deb; do dpkg -x "$deb" "$ROOT/sysroot"; done
  ver=${py#python}
  wheels=(--target "$ROOT/site" --only-binary=:all: --python-version "$ver" --implementation cp
          --abi "cp${ver/./}" --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
          --platform manylinux2014_aarch64 --quiet --no-warn-conflicts --root-user-action=ignore)
  # pip, without its warning about each package location of this machine's configuration that does not exist
  pipq() { python3 -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
  # torch without its dependencies: pip would judge their markers by this x86 machine (CUDA packages)
  pipq install "${wheels[@]}" --no-deps "torch==$TORCH"
  pipq install "${wheels[@]}" --upgrade filelock typing-extensions sympy networkx jinja2 fsspec \
    numpy pandas safetensors huggingface_hub tqdm matplotlib pyarrow pyyaml "pytest>=8" "pytest-timeout>=2.3" \
    "hypothesis>=6.100,<7"
  ln -sf "$(command -v aarch64-linux-gnu-g++)" "$ROOT/bin/g++"  # the kernels' compiler, run natively
  cat > "$ROOT/bin/python" <<EOF
#!/bin/sh
export QEMU_LD_PREFIX="$ROOT/sysroot" PYTHONPATH="$PWD:$ROOT/site\${PYTHONPATH:+:\$PYTHONPATH}"
export PATH="$ROOT/bin:$ROOT/site/bin:\$PATH" TIREX_CACHE_DIR="$ROOT/cache"
exec "$ROOT/sysroot/usr/bin/$py" "\$@"
EOF
  chmod +x "$ROOT/bin/python"
fi
# arm64 programs started by the emulated ones (the SIGILL pre-check's child, CLI and server processes)
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$(command -v qemu-aarch64)"':' \
    > /proc/sys/fs/binfmt_misc/register
fi
if [ "${1:-}" = --python ]; then
  shift
  exec "$ROOT/bin/python" "$@"
fi
# no test named (only options such as -q or -k): the dispatch and parity tests
case " $* " in *" tests"*|*"::"*) ;; *) set -- "$@" tests/test_cpu_dispatch.py tests/test_parity.py ;; esac
exec "$ROOT/bin/python" -m pytest -p no:cacheprovider -rs "$@"
