#!/usr/bin/env bash
# Writes packaging/homebrew/sdcoreml.rb for a release: make-formula.sh TARBALL URL HOMEPAGE
#   TARBALL   the release tarball, e.g. from
#             git archive --prefix=sdcoreml-0.1.0/ -o sdcoreml-0.1.0.tar.gz v0.1.0
#   URL       where that tarball is published
#   HOMEPAGE  the project's page
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[[ $# -eq 3 ]] || { echo "usage: make-formula.sh TARBALL URL HOMEPAGE" >&2; exit 2; }
version=$(sed -n 's/^project(sdcoreml VERSION \([0-9.]*\).*/\1/p' ../../CMakeLists.txt)
sha=$(sha256sum "$1" | cut -d' ' -f1)
sed -e "s|@URL@|$2|" -e "s|@SHA256@|$sha|" -e "s|@HOMEPAGE@|$3|" -e "s|@VERSION@|$version|" sdcoreml.rb.in > sdcoreml.rb
echo "wrote $(pwd)/sdcoreml.rb (sdcoreml $version, sha256 $sha)"
