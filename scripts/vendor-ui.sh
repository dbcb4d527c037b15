#!/bin/sh
# vendor-ui.sh refreshes the web UI's vendored third-party files from the npm
# registry and records their SHA-256 in internal/ui/testdata/vendor/MANIFEST,
# which internal/ui's TestVendoredHashes checks. Run it from the repository's
# root, review the diff, commit.
#
# The UI itself vendors no library: its script (internal/ui/static/ui.js) is
# ours (docs/UI.md, "Why no htmx"). What is vendored is axe-core, the
# accessibility checker the browser suite (e2e/ui_test.go) injects into every
# page; it is test data and never enters the binary.
#
#   scripts/vendor-ui.sh              # the versions pinned below
#   AXE_VERSION=4.15.0 scripts/vendor-ui.sh
set -eu

AXE_VERSION=${AXE_VERSION:-4.14.1}
dest=internal/ui/testdata/vendor
[ -d "$dest" ] || { echo "run from the repository's root" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# npm pack fetches the package tarball from the registry as published,
# checked against the registry's integrity hash; nothing is installed or run.
(cd "$tmp" && npm pack --silent "axe-core@$AXE_VERSION" >/dev/null)
tar -xzf "$tmp/axe-core-$AXE_VERSION.tgz" -C "$tmp"
cp "$tmp/package/axe.min.js" "$dest/axe.min.js"
cp "$tmp/package/LICENSE" "$dest/axe-core.LICENSE"

{
	echo "# file	package	version	sha256 (written by scripts/vendor-ui.sh)"
	for f in axe.min.js axe-core.LICENSE; do
		printf '%s\t%s\t%s\t%s\n' "$f" axe-core "$AXE_VERSION" "$(sha256sum "$dest/$f" | cut -d' ' -f1)"
	done
} >"$dest/MANIFEST"
cat "$dest/MANIFEST"
