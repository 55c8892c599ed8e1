#!/usr/bin/env bash
# The install_package test: installs this build tree into a scratch prefix, then builds
# consumer/main.c against that prefix only, four ways, and runs each as an MPI singleton:
#   1. CMake: find_package(longhaul CONFIG) + longhaul::longhaul
#   2. CMake: longhaul::longhaul_static (its private dependencies come through the package)
#   3. pkg-config: cc $(pkg-config --cflags --libs longhaul)
#   4. pkg-config --static with liblonghaul.a
# Any failure exits non-zero, naming the step.
#
# Usage: run_install_test.sh --build=DIR --work=DIR --source=DIR --cmake=EXE --cc=EXE
#          --generator=NAME --libdir=RELDIR --pkg-config=EXE --sanitize=[address|undefined]
set -uo pipefail

build="" work="" source="" cmake=cmake cc=cc generator="" libdir=lib pkg_config=pkg-config sanitize=""
for arg in "$@"; do
  case "$arg" in
    --build=*) build=${arg#*=} ;;
    --work=*) work=${arg#*=} ;;
    --source=*) source=${arg#*=} ;;
    --cmake=*) cmake=${arg#*=} ;;
    --cc=*) cc=${arg#*=} ;;
    --generator=*) generator=${arg#*=} ;;
    --libdir=*) libdir=${arg#*=} ;;
    --pkg-config=*) pkg_config=${arg#*=} ;;
    --sanitize=*) sanitize=${arg#*=} ;;
    *) echo "run_install_test.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
if [ -z "$build" ] || [ -z "$work" ] || [ -z "$source" ]; then
  echo "run_install_test.sh: --build, --work and --source are required" >&2
  exit 2
fi

fail() {
  echo "install_package: FAIL: $*" >&2
  exit 1
}
step() { echo; echo "== $*"; }
# Runs a command, showing it; a failure ends the test.
run() {
  echo "+ $*"
  "$@" || fail "exit status $? from: $*"
}

prefix=$work/prefix
{ rm -rf "$work" && mkdir -p "$work"; } || fail "cannot create $work"

# A sanitized library has the sanitizer runtime among its dependencies, which must come first
# in the program: build the consumers with the same flag.
san_flags=()
if [ -n "$sanitize" ]; then
  san_flags=("-fsanitize=$sanitize")
fi

step "cmake --install $build --prefix $prefix"
run "$cmake" --install "$build" --prefix "$prefix"
for f in include/longhaul/longhaul.h include/longhaul/version.h \
         "$libdir/liblonghaul.so" "$libdir/liblonghaul.a" \
         "$libdir/cmake/longhaul/longhaulConfig.cmake" "$libdir/cmake/longhaul/longhaulConfigVersion.cmake" \
         "$libdir/cmake/longhaul/longhaulTargets.cmake" "$libdir/pkgconfig/longhaul.pc"; do
  [ -e "$prefix/$f" ] || fail "not installed: $f"
done
[ ! -e "$prefix/include/longhaul/version.h.in" ] || fail "the template version.h.in was installed"

step "CMake consumer: find_package(longhaul CONFIG REQUIRED) with CMAKE_PREFIX_PATH=$prefix"
gen_args=()
if [ -n "$generator" ]; then
  gen_args=(-G "$generator")
fi
run "$cmake" -S "$source/consumer" -B "$work/cmake-build" "${gen_args[@]}" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS="${san_flags[*]}" -DCMAKE_EXE_LINKER_FLAGS="${san_flags[*]}"
# It must have used the fresh install, not some other longhaul on the machine.
found_dir=$(sed -n 's/^longhaul_DIR:PATH=//p' "$work/cmake-build/CMakeCache.txt")
case "$found_dir" in
  "$prefix"/*) ;;
  *) fail "find_package found longhaul in '$found_dir', not under $prefix" ;;
esac
run "$cmake" --build "$work/cmake-build"
run "$work/cmake-build/consumer"
run "$work/cmake-build/consumer_static"
if ldd "$work/cmake-build/consumer_static" | grep -q liblonghaul; then
  fail "consumer_static loads liblonghaul.so: it was meant to link the archive"
fi

step "pkg-config consumer: PKG_CONFIG_PATH=$prefix/$libdir/pkgconfig"
export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig"
cflags=$("$pkg_config" --cflags longhaul) || fail "pkg-config --cflags longhaul"
libs=$("$pkg_config" --libs longhaul) || fail "pkg-config --libs longhaul"
static_libs=$("$pkg_config" --static --libs longhaul) || fail "pkg-config --static --libs longhaul"
echo "cflags: $cflags"
echo "libs: $libs"
echo "static libs: $static_libs"
# The .pc file must describe where it was installed, not the configure-time prefix.
case "$cflags $libs" in
  *"$prefix"*) ;;
  *) fail "pkg-config points outside $prefix: $cflags $libs" ;;
esac
# Word splitting of the pkg-config output is intended: it is a list of flags.
# shellcheck disable=SC2086
run "$cc" -std=c11 -Wall -Wextra -Werror "${san_flags[@]}" "$source/consumer/main.c" -o "$work/consumer_pc" \
  $cflags $libs
run env LD_LIBRARY_PATH="$prefix/$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$work/consumer_pc"

step "pkg-config --static consumer with liblonghaul.a"
# -llonghaul would pick the shared library: name the archive instead, keep the rest.
static_rest=()
for flag in $static_libs; do
  [ "$flag" = "-llonghaul" ] || static_rest+=("$flag")
done
# shellcheck disable=SC2086
run "$cc" -std=c11 -Wall -Wextra -Werror "${san_flags[@]}" "$source/consumer/main.c" -o "$work/consumer_pc_static" \
  $cflags "$prefix/$libdir/liblonghaul.a" "${static_rest[@]}"
if ldd "$work/consumer_pc_static" | grep -q liblonghaul; then
  fail "consumer_pc_static loads liblonghaul.so: it was meant to link the archive"
fi
run "$work/consumer_pc_static"

echo
echo "install_package: all consumers built and ran"
