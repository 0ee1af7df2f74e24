#!/bin/sh
# Every global symbol the library defines starts with sdc_ (internal modules: sdc_<module>_...),
# so "not declared in sdcoreml.h → not API" holds by rule, not by luck, and the library cannot
# clash with a program's own names. Usage: test_symbols.sh libsdcoreml.a
set -eu
lib=$1
# defined, external symbols (text, data, bss, read-only data, weak); the protobuf-c code
# generated from our schema is named after its package (sdc.coreml → sdc__coreml__...).
# Names starting with "__" are the compiler's own (__odr_asan.* under AddressSanitizer).
syms=$(nm -g --defined-only "$lib" | awk 'NF == 3 && $3 !~ /^__/ { print $3 }' | sort -u)
total=$(printf '%s\n' "$syms" | grep -c . || true)
bad=$(printf '%s\n' "$syms" | grep -v '^sdc_' || true)
if [ -n "$bad" ]; then
    echo "test_symbols: $(printf '%s\n' "$bad" | grep -c .) of $total global symbols of $lib lack the sdc_ prefix:" >&2
    printf '  %s\n' $bad >&2
    exit 1
fi
echo "test_symbols: all $total global symbols start with sdc_"
